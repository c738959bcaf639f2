"""The graph `delete_channels` walks: a Functional model's consumers, inputs and shared layers
read from its live nodes (`_live_graph`, what `core.graph` and `core.shared_layers` read from
the config, faster), and the layers in topological order (`_topological`). Moved from
`edit/channels.py`."""

from __future__ import annotations

__all__: list[str] = []


def _live_graph(model) -> tuple[dict, dict, set] | None:
    """`core.graph` and `core.shared_layers` of a Keras 3 Functional model, read from its live
    nodes instead of its config: the same nodes (each layer's calls inside this model, with
    an input) and the same tensors in the same order (its arguments, depth first, as the
    config serializes them). A 100-layer model's config costs more than the whole walk.
    None for a model without those nodes (Sequential, tf_keras): then the config is read."""
    own, operations = getattr(model, "_nodes", None), getattr(model, "operations", None)
    if type(model).__name__ == "Sequential" or own is None or operations is None:
        return None
    try:
        from keras.src.ops.function import make_node_key
    except ImportError:  # pragma: no cover - another Keras: read the config
        return None
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    shared: set[str] = set()
    for op in operations:
        calls = [node for i, node in enumerate(getattr(op, "_inbound_nodes", ()))
                 if make_node_key(op, i) in own and node.input_tensors]
        if len(calls) > 1:
            shared.add(op.name)
        for node in calls:
            found: list[str] = []
            _tensor_sources((node.arguments.args, node.arguments.kwargs), found)
            for producer in dict.fromkeys(found):
                succ.setdefault(producer, []).append(op.name)
                pred.setdefault(op.name, []).append(producer)
    return succ, pred, shared


def _tensor_sources(value, found: list[str]) -> None:
    """The layer names of the Keras tensors in nested call arguments, depth first."""
    history = getattr(value, "_keras_history", None)
    if history is not None:
        found.append(history[0].name)
    elif isinstance(value, dict):
        for v in value.values():
            _tensor_sources(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _tensor_sources(v, found)


def _topological(names: list[str], pred: dict[str, list[str]]) -> list[str]:
    """Layers, each after the layers it reads (a shared layer's cycle is cut anywhere: the
    walk refuses shared layers on the path anyway)."""
    seen: set[str] = set()
    order: list[str] = []
    for root in dict.fromkeys(names):
        stack = [(root, False)]
        while stack:
            n, expanded = stack.pop()
            if expanded:
                order.append(n)
            elif n not in seen:
                seen.add(n)
                stack.append((n, True))
                stack.extend((p, False) for p in reversed(pred.get(n, [])) if p not in seen)
    return order
