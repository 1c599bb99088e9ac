"""Job runners behind the CLI: pretrain, finetune / evaluate, extract, demo."""
