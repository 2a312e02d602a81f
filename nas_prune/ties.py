"""Channel couplings Torch-Pruning's dependency graph does not express: equal chunks and channel shuffles.

Both ops are correct after a cut only if the cut is repeated in every piece, so they *tie* channels:

* an equal split (``torch.chunk``, ``split`` into equal sizes): the slim model splits its narrower input
  into equal pieces again, so every piece must lose the same positions. Torch-Pruning maps indices
  into the pieces but lets one piece lose more than another.
* a channel shuffle, ``view`` into ``(groups, n)`` (or ``(n, groups)``), ``transpose(1, 2)``, ``view`` back
  (ShuffleNet's ``channel_shuffle`` and pytorchcv's ``channel_shuffle2``): Torch-Pruning takes the views
  for reshapes it cannot map (it even fails on a stage of them). Here the chain is one permutation whose
  indices are mapped exactly, and the slim model shuffles its narrower input the same way only if every
  group loses the same positions: ShuffleNetV2's ``cat((x1, x2))`` + shuffle cuts both halves alike.

:class:`TiedGraph` installs these ties as index mappings that fan one index out to every position tied to
it, so Torch-Pruning's own groups come out closed under them. :meth:`TiedGraph.root_classes` says which of a
group's root channels are then tied to each other (they are kept or cut together).
"""

from __future__ import annotations

from numbers import Number

import torch
import torch_pruning as tp
from torch_pruning._helpers import GroupItem, _HybridIndex
from torch_pruning.dependency import index_mapping

__all__ = ["ChunkTie", "ShuffleTie", "TiedGraph", "tie_layout"]

_OPS = tp.ops.OPTYPE
_PASS_THROUGH = ("CloneBackward0",)  # ``.contiguous()`` between the transpose and the final view
# Node types whose incoming edges Torch-Pruning remaps itself (a chunk feeding one cannot be tied).
_REMAPPED = (_OPS.RESHAPE, _OPS.SLICE, _OPS.SPLIT, _OPS.UNBIND, _OPS.EXPAND)


class ShuffleTie:
    """A recognised channel shuffle: ``channels = fixed * free``, the ``fixed`` factor (the smaller one, the
    group count) outermost in the first view when ``fixed_first``. Cuts keep ``fixed`` and shrink ``free``.

    Attributes:
        where: where it is, for reasons ("at <module whose forward returns it>" or "of <n> channels").
        error: why it cannot be cut ("" when it can).
    """

    def __init__(self, outer: int, inner: int, where: str):
        self.fixed_first = outer < inner
        self.fixed, self.free = min(outer, inner), max(outer, inner)
        self.where = where
        self.error = ""
        if outer == inner and outer > 1:
            self.error = (
                f"the channel shuffle {where} splits {outer * inner} channels into {outer} x {inner}, so which "
                "factor is the group count (kept when the shuffle is cut) is ambiguous"
            )

    def _in_class(self, i: int) -> range:
        """Input channels tied to input channel ``i`` (the same position in every group)."""
        if self.fixed_first:
            return range(i % self.free, self.fixed * self.free, self.free)
        start = i - i % self.fixed
        return range(start, start + self.fixed)

    def _to_out(self, i: int) -> int:
        outer, inner = (self.fixed, self.free) if self.fixed_first else (self.free, self.fixed)
        x, y = divmod(i, inner)
        return y * outer + x

    def _to_in(self, j: int) -> int:
        outer, inner = (self.fixed, self.free) if self.fixed_first else (self.free, self.fixed)
        y, x = divmod(j, outer)
        return x * inner + y

    def forward(self, idxs):
        """Torch-Pruning index mapping: input channels -> every output channel tied to them."""
        return _dedupe(_HybridIndex(self._to_out(i), h.root_idx) for h in idxs for i in self._in_class(h.idx))

    def reverse(self, idxs):
        """Torch-Pruning index mapping: output channels -> every input channel tied to them."""
        return _dedupe(_HybridIndex(i, h.root_idx) for h in idxs for i in self._in_class(self._to_in(h.idx)))

    def prune_out_channels(self, layer, idxs) -> None:
        """Called by Torch-Pruning when a group cuts input channels ``idxs`` (whole classes) of the shuffle:
        later mappings follow the narrower shuffle."""
        self.free -= len(set(idxs)) // self.fixed

    prune_in_channels = prune_out_channels


class ChunkTie:
    """An equal split of the channels (``torch.chunk``): ``pieces`` pieces of ``size``, each losing the same
    positions. Torch-Pruning's own mapping of a chunk is not used: it infers wrong piece sizes from the
    layers around it and lets pieces lose different positions.

    Attributes:
        where: where it is, for reasons.
        error: why its group cannot be cut ("" when it can).
    """

    def __init__(self, pieces: int, size: int, where: str):
        self.pieces, self.size = pieces, size
        self.where = where
        self.error = ""

    def forward(self, idxs):
        """Torch-Pruning index mapping: input channels -> the same position in a piece."""
        return _dedupe(_HybridIndex(h.idx % self.size, h.root_idx) for h in idxs)

    def reverse(self, idxs):
        """Torch-Pruning index mapping: positions in a piece -> those positions in every piece of the input."""
        total = self.size * self.pieces
        return _dedupe(
            _HybridIndex(p, h.root_idx) for h in idxs for p in range(h.idx % self.size, total, self.size)
        )

    def prune_out_channels(self, layer, idxs) -> None:
        """Called by Torch-Pruning when a group cuts input channels ``idxs`` (whole classes) of the chunk."""
        self.size -= len(set(idxs)) // self.pieces

    prune_in_channels = prune_out_channels


def _dedupe(idxs) -> list:
    seen, out = set(), []
    for h in idxs:
        if h.idx not in seen:
            seen.add(h.idx)
            out.append(h)
    return out


class TiedGraph(tp.DependencyGraph):
    """Torch-Pruning's ``DependencyGraph`` with equal chunks and channel shuffles tied (see the module).

    Attributes (after ``build_dependency``):
        ties: each chunk's node and each shuffle's first node -> its :class:`ChunkTie` / :class:`ShuffleTie`.
        shuffle_nodes: every node of every recognised shuffle (their reordering is mapped, not a reason
            to freeze).
    """

    def _trace(self, model, *args, **kwargs):
        """Torch-Pruning's trace, also noting which module's forward returned each tensor (to name ties)."""
        self._producers: dict[object, str] = {}

        def note(module, inputs, output):
            for tensor in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(tensor, torch.Tensor) and tensor.grad_fn is not None:
                    self._producers.setdefault(tensor.grad_fn, self._module2name.get(module, ""))

        hooks = [m.register_forward_hook(note) for m in model.modules()]
        try:
            return super()._trace(model, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()

    def _build_dependency(self, module2node):
        super()._build_dependency(module2node)
        self.ties: dict[object, ChunkTie | ShuffleTie] = {}
        self.shuffle_nodes: set = set()
        for node in list(module2node.values()):
            if node.type == _OPS.SPLIT:
                self._tie_chunk(node)
            elif node.type == _OPS.RESHAPE:
                chain = _shuffle_chain(node)
                if chain is not None:
                    self._tie_shuffle(*chain)

    def get_out_channels(self, module_or_node):
        tie = self.ties.get(module_or_node) if hasattr(self, "ties") else None
        return tie.size if isinstance(tie, ChunkTie) else super().get_out_channels(module_or_node)

    def get_in_channels(self, module_or_node):
        tie = self.ties.get(module_or_node) if hasattr(self, "ties") else None
        return tie.size * tie.pieces if isinstance(tie, ChunkTie) else super().get_in_channels(module_or_node)

    def get_pruning_group(self, module, pruning_fn, idxs):
        """Torch-Pruning's group of ``module``'s channels ``idxs``, walking each layer's new indices only.

        Torch-Pruning's own walk revisits a layer for every new list of indices reaching it; with ties
        fanning indices out, the lists multiply and a ShuffleNetV2 stage never finishes. The group is the
        same: per layer and pruning function, the indices reached and the root channel of each.
        """
        if not self.ties:
            return super().get_pruning_group(module, pruning_fn, idxs)
        if isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels > 1:
            pruning_fn = tp.pruner.function.prune_depthwise_conv_out_channels  # as Torch-Pruning does
        found = self._walk(module, pruning_fn, [idxs] if isinstance(idxs, Number) else idxs)
        group = tp.Group()
        group._DG = self
        for (node, _), (dep, reached) in found.items():
            if node.type == _OPS.PARAMETER and any(node.module is p for p in self.ignored_params):
                continue
            item = GroupItem(dep, [h.idx for h in reached.values()])
            item.root_idxs = [h.root_idx for h in reached.values()]
            group.items.append(item)
        return group

    def root_classes(self, module, pruning_fn, channels: int) -> list[list[int]]:
        """The root channels of ``module``'s group that ties make inseparable, as a partition.

        Two root channels reaching the same channel of the same layer are tied (every coupling works both
        ways, so each reaches all the other does), so their classes merge.
        """
        parent = list(range(channels))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        def merge(a: int, b: int) -> None:
            parent[find(a)] = find(b)

        self._walk(module, pruning_fn, range(channels), merge)
        classes: dict[int, list[int]] = {}
        for i in range(channels):
            classes.setdefault(find(i), []).append(i)
        return sorted(classes.values())

    def _walk(self, module, pruning_fn, idxs, revisit=None) -> dict:
        """(node, handler) -> (first dependency reaching it, {index: HybridIndex}) over ``module``'s group;
        ``revisit(root, other_root)`` is told of every index reached again from another root channel."""
        index_mapping.update_index_mapping(self)
        root = self.module2node[module]
        found: dict[tuple, tuple] = {}
        stack = [
            (
                tp.Dependency(pruning_fn, pruning_fn, source=root, target=root),
                [_HybridIndex(i, i) for i in idxs],
            )
        ]
        while stack:
            dep, hybrid = stack.pop()
            reached = found.setdefault((dep.target, dep.handler), (dep, {}))[1]
            fresh = []
            for h in hybrid:
                if h.idx not in reached:
                    reached[h.idx] = h
                    fresh.append(h)
                elif revisit is not None:
                    revisit(reached[h.idx].root_idx, h.root_idx)
            for new_dep in dep.target.dependencies if fresh else ():
                if new_dep.is_triggered_by(dep.handler):
                    mapped = fresh
                    for mapping in new_dep.index_mapping:
                        mapped = mapped if mapping is None else mapping(mapped)
                    if mapped:
                        stack.append((new_dep, mapped))
        return found

    def _where(self, grad_fns, fallback: str) -> str:
        names = [self._producers[f] for f in grad_fns if self._producers.get(f)]
        return f"at {names[0]}" if names else fallback

    def _tie_chunk(self, node) -> None:
        """Take over the index mapping of an equal split along channels (nothing else is touched)."""
        pieces = _equal_pieces(node.grad_fn)
        if pieces is None:
            return
        where = self._where([out.grad_fn for out in node.outputs], f"of {pieces[0] * pieces[1]} channels")
        tie = ChunkTie(*pieces, where)
        clash = [out for out in node.outputs if out.type in _REMAPPED]
        if clash:
            tie.error = (
                f"the chunk {where} feeds a {clash[0].type.name.lower()}, whose index mapping clashes with it"
            )
        node.type = _OPS.ELEMENTWISE  # Torch-Pruning no longer maps (or sizes) it as a split
        for dep in node.dependencies:
            if dep.target in node.outputs:
                dep.index_mapping[0] = tie.forward
        for out in node.outputs:
            for dep in out.dependencies:
                if dep.target is node:
                    dep.index_mapping.append(tie.reverse)  # after a concat's own mapping (slot 1)
        self._listen(node, tie)

    def _tie_shuffle(self, nodes: list, outer: int, inner: int) -> None:
        """Map the chain's indices exactly (on the edge between its first two nodes, which Torch-Pruning
        never remaps), keep its views from being taken for reshapes, and listen to its cuts."""
        first, second, last = nodes[0], nodes[1], nodes[-1]
        tie = ShuffleTie(outer, inner, self._where([last.grad_fn], f"of {outer * inner} channels"))
        for node in (first, last):
            node.type = _OPS.ELEMENTWISE
        for dep in first.dependencies:
            if dep.target is second:
                dep.index_mapping[0] = tie.forward
        for dep in second.dependencies:
            if dep.target is first:
                dep.index_mapping[0] = tie.reverse
        self._listen(first, tie)
        self.shuffle_nodes.update(nodes)

    def _listen(self, node, tie) -> None:
        """Register ``tie`` on ``node``: a dependency of the node on itself, so a cut reaching it is told."""
        trigger = self.get_pruner_of_module(node.module).prune_in_channels
        node.dependencies.append(
            tp.Dependency(trigger=trigger, handler=tie.prune_in_channels, source=node, target=node)
        )
        self.ties[node] = tie
        self.ties[node.module] = tie


def _equal_pieces(grad_fn) -> tuple[int, int] | None:
    """``(pieces, size)`` of a split of dim 1 into equal pieces, None for any other split."""
    sizes = tuple(getattr(grad_fn, "_saved_self_sym_sizes", ()))
    if len(sizes) < 2 or getattr(grad_fn, "_saved_dim", 0) % len(sizes) != 1:
        return None
    total = int(sizes[1])
    if hasattr(grad_fn, "_saved_split_sizes"):
        split = {int(v) for v in grad_fn._saved_split_sizes}
        size = split.pop() if len(split) == 1 else 0
    else:
        size = int(getattr(grad_fn, "_saved_split_size", 0))
    if size <= 0 or total % size:
        return None
    return total // size, size


def _op(node) -> str:
    return node.grad_fn.name() if node.grad_fn is not None and hasattr(node.grad_fn, "name") else ""


def _only(nodes):
    return nodes[0] if len(nodes) == 1 else None


def _shuffle_chain(view) -> tuple[list, int, int] | None:
    """``(nodes, outer, inner)`` when ``view`` starts ``view(b, outer, inner, ...)`` -> swap of dims 1 and 2 ->
    ``view`` back to the input's shape, each node feeding only the next; None otherwise."""
    sizes = tuple(getattr(view.grad_fn, "_saved_self_sym_sizes", ()))
    if len(sizes) < 2 or len(view.outputs) != 1:
        return None
    nodes, node = [view], _only(view.outputs)
    while node is not None and _op(node) in _PASS_THROUGH:
        nodes.append(node)
        node = _only(node.outputs)
    if node is None or not _swaps_dims_1_2(node.grad_fn, len(sizes) + 1):
        return None
    nodes.append(node)
    node = _only(node.outputs)
    while node is not None and _op(node) in _PASS_THROUGH:
        nodes.append(node)
        node = _only(node.outputs)
    if node is None or node.type != _OPS.RESHAPE or any(len(n.inputs) != 1 for n in nodes[1:] + [node]):
        return None
    merged = tuple(getattr(node.grad_fn, "_saved_self_sym_sizes", ()))
    if len(merged) != len(sizes) + 1 or merged[0] != sizes[0] or merged[3:] != sizes[2:]:
        return None
    if merged[1] * merged[2] != sizes[1]:
        return None
    return nodes + [node], int(merged[2]), int(merged[1])


def _swaps_dims_1_2(grad_fn, ndim: int) -> bool:
    name = grad_fn.name() if grad_fn is not None and hasattr(grad_fn, "name") else ""
    if name == "TransposeBackward0":
        return {grad_fn._saved_dim0 % ndim, grad_fn._saved_dim1 % ndim} == {1, 2}
    if name == "PermuteBackward0":
        return [d % ndim for d in grad_fn._saved_dims] == [0, 2, 1, *range(3, ndim)]
    return False


def tie_layout(
    shuffles: list[str], classes: list[list[int]], channels: int
) -> tuple[int, list[int] | None, str]:
    """``(multiple, order, reason)`` for a group whose root channels are tied in ``classes``.

    Classes of ``m`` channels are kept whole by widths in multiples of ``m`` when the root channels are
    seen class by class as positions of ``m`` blocks (as a grouped conv's): ``order[v]`` is the root
    channel at position ``v % (channels // m)`` of block ``v // (channels // m)``, None when the root's
    own order already is that. Classes of different sizes, or one class of every channel, freeze the
    group: ``reason`` names what ties them (the shuffles, by the module whose forward returns each).
    """
    what, size = _tied_by(shuffles), len(classes[0])
    if any(len(c) != size for c in classes):
        return 1, None, f"{what} tie its {channels} channels in classes of different sizes"
    if size == 1:
        return 1, None, ""
    if size == channels:
        reason = f"{what} tie all {channels} channels together (a cut must repeat in every piece of a chunk"
        return 1, None, reason + " and every group of a shuffle)"
    order = [c[b] for b in range(size) for c in classes]
    return size, (None if order == list(range(channels)) else order), ""


def _tied_by(shuffles: list[str]) -> str:
    if not shuffles:
        return "equal chunks"
    if len(shuffles) == 1:
        return f"the channel shuffle {shuffles[0]}"
    return f"{len(shuffles)} channel shuffles ({shuffles[0]} ... {shuffles[-1]}) and the chunks between them"
