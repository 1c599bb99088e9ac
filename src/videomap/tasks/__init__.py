"""Job runners behind the CLI, one module per family: pretrain, finetune (and evaluate), extract,
export, llm (llm-train, llm-eval, chat), vl (vl-train, retrieval-eval, search), and the demos
(demo, llm_demo, vl_demo). They wire configs to the packages below and own no model or training
logic; ``common`` holds what several runners share (datasets and models from a job)."""
