"""Plumbing: the Flower engine, FIRM's algorithms on Flower's Deployment Engine (flwr 1.41, Message API).

The only package that imports `flwr`. Modules:
- `records`: config <-> run-config and adapter <-> ArrayRecord converters, payload byte counts;
- `engine`: `FlowerEngine`, the server's side of a round over a Flower Grid;
- `secagg`: `SecureFlowerEngine`, the training round through Flower's SecAgg+ (`engine.secure_aggregation`);
- `apps`: the ServerApp (runs `firm.train.run` with the FlowerEngine) and the ClientApp;
- `palette`: the palette's statistics rounds as `query.palette` messages to the SuperNodes;
- `worker`: a warm ClientApp process per SuperNode (model and scorers loaded once);
- `submit`: `firm train engine=flower` (`flwr run` of a generated app, log streamed);
- `local`: `firm flower up / down`, a loopback SuperLink and SuperNodes.
See docs/deployment.md.
"""
