"""Learned rewards: a federated preference predictor trained on human ratings (PluralLLM).

Layers, bottom up (each module imports only those above it in this list):
- `ratings`: the chitchat-dataset ratings as groups of rated texts, split into seen and unseen groups;
- `embeddings`: MiniLM embeddings of those texts, cached on disk;
- `predictor`: GPO (a transformer over a group's (embedding, rating) context) and a regression head;
- `metrics`: PluralLLM's alignment score (1 - JS distance), per group, and the fairness view;
- `episodes`: a group's items as tensors, and the few-shot episodes the predictor trains on;
- `local`: a client's local update, the pooled (centralized) update, evaluation;
- `server`: the server's optimiser (FedAvg, FedAvgM, FedAdam, FedAdagrad) on the pseudo-gradient;
- `model_dir`: the trained predictor on disk, loaded by the `learned:<path>` objective;
- `config`, `train`, `report`, `cli`: `firm reward train`.
"""
