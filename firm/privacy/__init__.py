"""Client-level differential privacy for federated training (DP-FedAvg; docs/privacy.md).

Layers, bottom up:
- `config`: the `[privacy]` section (a leaf: `firm.config` holds it);
- `mechanism`: clip a client's whole update to L2 norm C and add its share of the Gaussian noise;
- `ledger`: the RDP accountant (flwr.serverapp.RdpAccountant over Google's dp-accounting): epsilon
  after every round, the budget check before one, its state in the checkpoint;
- `wrap`: the algorithm wrapper that applies the mechanism on the client (`client` mode) or in the
  server's aggregator (`server` mode), so both engines get it through the algorithm seam;
- `validate_config` (in `wrap`): the combinations that cannot work, refused with one line.
"""
