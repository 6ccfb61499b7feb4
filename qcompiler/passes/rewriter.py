"""Declarative pattern rewriting: patterns with named captures, rules (pattern / check / rewrite), a worklist driver.

    FUSE = Rule(
        "fuse-relu-into-conv",
        Pat("relu", Pat("conv2d", capture="conv", one_use=True), capture="act"),
        check=lambda m: None if m["conv"].attrs["activation"] == "none" else "conv already has an activation",
        rewrite=_fuse,
    )
    stats = apply_rules(graph, [FUSE])
    assert stats.applied["fuse-relu-into-conv"] == 1 and stats.erased == 1

A `Pat` matches a node by op; its operand patterns match the node's first operands (extra operands are allowed
unless `arity` is given). `Var`/`Const` match a value. Captures of op patterns give the `Node`, captures of value
patterns the `Value`; a name captured twice must bind the same object. `check` returns None to go ahead or a
reason the rule does not apply; reasons are kept in `RewriteStats.failures` for debugging.

A rewrite edits the graph only through the `Rewriter` it is given, so that the driver learns which nodes to
revisit and the counts (inserted / erased / replaced) stay exact. Nodes that lose their last use are erased at
once (trivially dead code), so create replacement values before rewiring uses.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from qcompiler.ir.graph import Graph, IRError, Node, Value
from qcompiler.ir.printer import ElidedArray
from qcompiler.passes.base import Pass, PassResult

Captures = dict[str, Any]  # capture name -> Node (op patterns) or Value (Var / Const)
NodePredicate = Callable[[Node], bool]
ValuePredicate = Callable[[Value], bool]


# ----------------------------------------------------------------------------------------------------
# patterns
# ----------------------------------------------------------------------------------------------------
class Pattern(ABC):
    """Matches a value. Subclasses: `Pat` (the value's producer is a given op), `Var`, `Const`."""

    capture: Optional[str] = None

    @abstractmethod
    def match_value(self, value: Value, caps: Captures) -> Optional[Captures]:
        """The captures extended by this match, or None."""


def _bind(caps: Captures, name: Optional[str], obj: Any) -> Optional[Captures]:
    if name is None:
        return caps
    if name in caps:
        return caps if caps[name] is obj else None
    return {**caps, name: obj}


class Var(Pattern):
    """A pattern variable: any value (`where` filters it)."""

    def __init__(self, capture: Optional[str] = None, where: Optional[ValuePredicate] = None) -> None:
        self.capture, self.where = capture, where

    def match_value(self, value: Value, caps: Captures) -> Optional[Captures]:
        if self.where is not None and not self.where(value):
            return None
        return _bind(caps, self.capture, value)

    def __repr__(self) -> str:
        return f"Var({self.capture or ''})"


class Const(Var):
    """A value produced by a `const` node."""

    def match_value(self, value: Value, caps: Captures) -> Optional[Captures]:
        return super().match_value(value, caps) if value.is_constant else None

    def __repr__(self) -> str:
        return f"Const({self.capture or ''})"


class Pat(Pattern):
    """A node pattern: `Pat("relu", Pat("conv2d", capture="conv"), capture="act")`.

    op: an op name, a collection of names, or None for any op.
    operands: patterns for the first operands (a plain string is shorthand for `Var(capture=string)`).
    arity: exact number of operands, when it matters.
    attrs: attribute values the node must have.
    one_use: the node's result has exactly one use and is not a graph output (needed to fold it away).
    commutative: for two-operand patterns, also try the operands swapped.
    where: extra predicate on the node.
    """

    def __init__(self, op: Union[str, Iterable[str], None], *operands: Union[Pattern, str],
                 capture: Optional[str] = None, arity: Optional[int] = None, attrs: Optional[dict] = None,
                 one_use: bool = False, commutative: bool = False, where: Optional[NodePredicate] = None) -> None:
        self.ops: Optional[frozenset[str]] = None if op is None else frozenset([op] if isinstance(op, str) else op)
        self.operands = [Var(capture=p) if isinstance(p, str) else p for p in operands]
        self.capture, self.arity, self.attrs = capture, arity, dict(attrs or {})
        self.one_use, self.commutative, self.where = one_use, commutative, where
        if commutative and len(self.operands) != 2:
            raise ValueError("a commutative pattern needs exactly two operand patterns")

    def match_node(self, node: Node, caps: Optional[Captures] = None) -> Optional[Captures]:
        caps = {} if caps is None else caps
        if self.ops is not None and node.op not in self.ops:
            return None
        if self.arity is not None and len(node.operands) != self.arity:
            return None
        if len(node.operands) < len(self.operands):
            return None
        if any(node.attrs.get(k) != v for k, v in self.attrs.items()):
            return None
        if self.one_use and not has_one_use(node):
            return None
        if self.where is not None and not self.where(node):
            return None
        bound = _bind(caps, self.capture, node)
        if bound is None:
            return None
        orders = [self.operands]
        if self.commutative:
            orders.append(self.operands[::-1])
        for order in orders:
            result = _match_operands(order, node.operands, bound)
            if result is not None:
                return result
        return None

    def match_value(self, value: Value, caps: Captures) -> Optional[Captures]:
        if value.producer is None:
            return None
        return self.match_node(value.producer, caps)

    def __repr__(self) -> str:
        ops = "*" if self.ops is None else "|".join(sorted(self.ops))
        inner = ", ".join(repr(p) for p in self.operands)
        return f"Pat({ops}{', ' if inner else ''}{inner})"


def _match_operands(patterns: Sequence[Pattern], values: Sequence[Value],
                    caps: Captures) -> Optional[Captures]:
    for pattern, value in zip(patterns, values):
        caps = pattern.match_value(value, caps)
        if caps is None:
            return None
    return caps


# ----------------------------------------------------------------------------------------------------
# predicates shared by rules
# ----------------------------------------------------------------------------------------------------
def has_one_use(node: Node) -> bool:
    """The node's single result is used exactly once and is not a graph output."""
    if len(node.results) != 1:
        return False
    value = node.results[0]
    return len(value.uses) == 1 and not (node.graph is not None and node.graph.is_output(value))


def single_use_reason(node: Node) -> Optional[str]:
    """Why `node`'s result may not be folded into its user, or None: it must have exactly one use and not be a
    graph output."""
    value = node.result
    if len(value.uses) != 1:
        return f"{node.op} result %{value.name} has {len(value.uses)} uses"
    if node.graph is not None and node.graph.is_output(value):
        return f"{node.op} result %{value.name} is also a graph output"
    return None


def batched_fc_reason(node: Node) -> Optional[str]:
    """Why nothing folds into `node`'s weights and bias because it is a fully_connected on a rank > 2 input, or
    None. Keras computes such a Dense as a tensordot (reshape to 2-D, matmul, reshape back) and then adds the
    bias; TFLiteConverter keeps the reshapes around its FULLY_CONNECTED, so it folds no bias, batch norm, mul or
    add across them (docs/quantization-notes.md)."""
    if node.op == "fully_connected" and node.operands[0].type.rank > 2:
        return (f"{node.describe()} runs on a rank-{node.operands[0].type.rank} input, which the converter "
                "reshapes to 2-D around it; nothing folds across the reshapes")
    return None


def has_data(value: Value) -> bool:
    """A constant whose array is known (not a digest-only placeholder read from a short dump)."""
    return value.is_constant and not isinstance(value.stored, ElidedArray)


def constant_scalar(value: Value) -> Optional[float]:
    """The number a constant holds when all its elements are equal, else None."""
    if not has_data(value):
        return None
    data = np.asarray(value.data)
    if data.size == 0 or not np.all(data == data.flat[0]):
        return None
    return float(data.flat[0])


# ----------------------------------------------------------------------------------------------------
# rules and matches
# ----------------------------------------------------------------------------------------------------
class Match:
    """The captures of one match; `m["conv"]` is a Node for op patterns and a Value for Var/Const.

    `memo` carries what a check computed (e.g. folded arrays) to the rewrite.
    """

    def __init__(self, root: Node, captures: Captures) -> None:
        self.root = root
        self.captures = captures
        self.memo: Captures = {}

    def __getitem__(self, name: str) -> Any:
        return self.captures[name]

    def __contains__(self, name: str) -> bool:
        return name in self.captures


CheckFn = Callable[[Match], Optional[str]]
RewriteFn = Callable[[Match, "Rewriter"], None]


@dataclass(frozen=True)
class Rule:
    """pattern -> check (None or the reason it does not apply) -> rewrite."""

    name: str
    pattern: Pat
    rewrite: RewriteFn
    check: Optional[CheckFn] = None

    def match(self, node: Node) -> Optional[Match]:
        caps = self.pattern.match_node(node)
        return None if caps is None else Match(node, caps)


@dataclass(frozen=True)
class Failure:
    rule: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule} did not apply to {self.node}: {self.reason}"


@dataclass
class RewriteStats:
    """Counts of graph edits. `replaced` counts nodes whose results were redirected to other values."""

    inserted: int = 0
    erased: int = 0
    replaced: int = 0
    attrs_changed: int = 0
    operands_changed: int = 0
    applied: Counter = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return bool(self.inserted or self.erased or self.replaced or self.attrs_changed or self.operands_changed)

    def counters(self) -> dict[str, int]:
        counts = {f"rule:{name}": n for name, n in sorted(self.applied.items())}
        for key in ("inserted", "erased", "replaced"):
            if getattr(self, key):
                counts[f"nodes-{key}"] = getattr(self, key)
        return counts


# ----------------------------------------------------------------------------------------------------
# the rewriter: every graph edit a rule makes goes through it
# ----------------------------------------------------------------------------------------------------
class Rewriter:
    def __init__(self, graph: Graph, stats: Optional[RewriteStats] = None) -> None:
        self.graph = graph
        self.stats = stats if stats is not None else RewriteStats()
        self.anchor: Optional[Node] = None  # new nodes go before it unless told otherwise
        self.touched: list[Node] = []  # nodes the driver should look at again
        self.fresh: set[int] = set()  # ids of nodes created by the current rewrite

    # ----- creating -----
    def op(self, op: str, *operands: Value, name: Optional[str] = None, layer: Optional[str] = None,
           before: Optional[Node] = None, **attrs: Any) -> Value:
        node = self.graph.add_node(op, operands, attrs, names=[name], layer=layer, before=before or self.anchor)
        self._inserted(node)
        return node.result

    def const(self, array: np.ndarray, name: Optional[str] = None, layer: Optional[str] = None,
              before: Optional[Node] = None, dtype: Optional[str] = None) -> Value:
        value = self.graph.const(array, name=name, layer=layer, before=before or self.anchor, dtype=dtype)
        self._inserted(value.producer)
        return value

    def _inserted(self, node: Node) -> None:
        self.stats.inserted += 1
        self.fresh.add(id(node))
        self.touched.append(node)

    # ----- changing -----
    def set_attr(self, node: Node, key: str, value: Any) -> None:
        node.attrs[key] = value
        self.stats.attrs_changed += 1
        self.touched.append(node)

    def set_operand(self, node: Node, index: int, value: Value) -> None:
        old = node.operands[index]
        if old is value:
            return
        node.set_operand(index, value)
        self.stats.operands_changed += 1
        self.touched.append(node)
        self._erase_if_dead(old)
        if old.producer is not None and old.producer.graph is None and self._is_fresh(value):
            self.graph.rename(value, old.name)  # e.g. folded weights keep the name of the weights they replace

    def add_operand(self, node: Node, value: Value) -> None:
        """Append an operand (an optional one such as a bias)."""
        node.set_operands([*node.operands, value])
        self.stats.operands_changed += 1
        self.touched.append(node)

    def _is_fresh(self, value: Value) -> bool:
        return value.producer is not None and id(value.producer) in self.fresh

    def replace(self, node: Node, new_values: Sequence[Value]) -> None:
        """Redirect every use of `node`'s results (graph outputs too) to `new_values`, then erase `node`.

        Names stay stable: a value created by the current rewrite takes over the old name, and so does any
        value that becomes a graph output in the old one's place (unless it is an input or output already).
        """
        if len(new_values) != len(node.results):
            raise IRError(f"{node.describe()} has {len(node.results)} results, replaced by {len(new_values)} values")
        renames = []
        for old, new in zip(node.results, new_values):
            if self._takes_name(old, new):
                renames.append((new, old.name))
            self.touched.extend(old.users)
            self.graph.replace_all_uses(old, new)
        self.stats.replaced += 1
        self.erase(node)
        for value, name in renames:
            self.graph.rename(value, name)

    def _takes_name(self, old: Value, new: Value) -> bool:
        """A value created by this rewrite, or one that becomes a graph output, inherits the old name."""
        if new.producer is None or self.graph.is_output(new):
            return False
        return self._is_fresh(new) or self.graph.is_output(old)

    def replace_value(self, node: Node, new_value: Value) -> None:
        """`replace` for a single-result node."""
        self.replace(node, [new_value])

    def erase(self, node: Node) -> None:
        """Erase an unused node, then every producer that this leaves unused."""
        operands = list(node.operands)
        self.graph.remove(node)
        self.stats.erased += 1
        for value in operands:
            self._erase_if_dead(value)

    def _erase_if_dead(self, value: Value) -> None:
        producer = value.producer
        if producer is None or producer.graph is not self.graph:
            return
        if any(r.uses or self.graph.is_output(r) for r in producer.results):
            self.touched.append(producer)  # one use fewer may enable a rule on it
            return
        self.erase(producer)


# ----------------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------------
class _LifoWorklist:
    """MLIR's greedy driver order (bottom-up, its default): the graph's nodes pushed in order and popped from the
    back, so the last node is visited first. Pushing a node that is still queued leaves it where it is (MLIR's
    `Worklist::push`); a node visited already goes to the back and is visited next."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self._stack: list[Node] = []
        self._queued: set[int] = set()
        for node in nodes:
            self.push(node)

    def push(self, node: Node) -> None:
        if id(node) not in self._queued:
            self._queued.add(id(node))
            self._stack.append(node)

    def pop(self) -> Optional[Node]:
        if not self._stack:
            return None
        node = self._stack.pop()
        self._queued.discard(id(node))
        return node


def apply_rules(graph: Graph, rules: Sequence[Rule], max_rewrites: Optional[int] = None,
                bottom_up: bool = False, stats: Optional[RewriteStats] = None) -> RewriteStats:
    """Apply `rules` until none fires. Rules are tried in order on each node; the first that applies wins.

    Nodes are visited in graph order; a rewrite queues the nodes it created or changed and the users of
    replaced values, so chains of rewrites settle without rescanning the graph. `bottom_up` visits them as
    MLIR's greedy pattern driver does (last node first, requeued nodes next), for passes that reproduce which of
    two competing TFLiteConverter rewrites wins. `stats` accumulates the counts of several runs.
    """
    stats = stats if stats is not None else RewriteStats()
    rewriter = Rewriter(graph, stats)
    rules_for: dict[str, list[Rule]] = {}
    limit = max_rewrites if max_rewrites is not None else 100 * (len(graph.nodes) + 10)
    ops = _root_ops(rules)
    if bottom_up:
        return _apply_bottom_up(graph, rules, rewriter, stats, limit, ops)
    worklist: deque[Node] = deque(n for n in graph.nodes if ops is None or n.op in ops)
    queued = {id(n) for n in worklist}
    seen_failures: set[tuple[str, str, str]] = set()
    while worklist:
        node = worklist.popleft()
        queued.discard(id(node))
        if node.graph is not graph:
            continue
        for touched in _try_rules(node, rules, rules_for, rewriter, stats, seen_failures, limit):
            if touched.graph is graph and id(touched) not in queued and (ops is None or touched.op in ops):
                queued.add(id(touched))
                worklist.append(touched)
    return stats


def _root_ops(rules: Sequence[Rule]) -> Optional[frozenset[str]]:
    """The ops some rule can match at its root (None: some rule matches any op). Nodes of other ops are never
    queued: no rule could fire on them (most nodes of a model are constants)."""
    ops: set[str] = set()
    for rule in rules:
        if rule.pattern.ops is None:
            return None
        ops |= rule.pattern.ops
    return frozenset(ops)


def _apply_bottom_up(graph: Graph, rules: Sequence[Rule], rewriter: Rewriter, stats: RewriteStats,
                     limit: int, ops: Optional[frozenset[str]]) -> RewriteStats:
    worklist = _LifoWorklist([n for n in graph.nodes if ops is None or n.op in ops])
    rules_for: dict[str, list[Rule]] = {}
    seen_failures: set[tuple[str, str, str]] = set()
    while (node := worklist.pop()) is not None:
        if node.graph is not graph:
            continue
        for touched in _try_rules(node, rules, rules_for, rewriter, stats, seen_failures, limit):
            if touched.graph is graph and (ops is None or touched.op in ops):
                worklist.push(touched)
    return stats


def _try_rules(node: Node, rules: Sequence[Rule], rules_for: dict[str, list[Rule]], rewriter: Rewriter,
               stats: RewriteStats, seen_failures: set[tuple[str, str, str]], limit: int) -> list[Node]:
    """Apply the first rule that matches `node` and passes its check; the nodes to queue again ([] if none)."""
    if node.op not in rules_for:
        rules_for[node.op] = [r for r in rules if r.pattern.ops is None or node.op in r.pattern.ops]
    for rule in rules_for[node.op]:
        match = rule.match(node)
        if match is None:
            continue
        reason = rule.check(match) if rule.check is not None else None
        if reason is not None:
            key = (rule.name, node.describe(), reason)
            if key not in seen_failures:
                seen_failures.add(key)
                stats.failures.append(Failure(rule.name, node.describe(), reason))
            continue
        rewriter.anchor = node
        rewriter.touched, rewriter.fresh = [], set()
        rule.rewrite(match, rewriter)
        stats.applied[rule.name] += 1
        if sum(stats.applied.values()) > limit:
            raise IRError(f"rewrite rules did not settle after {limit} rewrites (last: {rule.name} on "
                          f"{node.describe()}); two rules probably undo each other")
        return [node, *rewriter.touched]
    return []


def result_from_stats(stats: RewriteStats, extra: Optional[dict[str, int]] = None) -> PassResult:
    counters = {**stats.counters(), **(extra or {})}
    return PassResult(stats.modified, counters, tuple(str(f) for f in stats.failures))


class RewritePass(Pass):
    """A pass that is a list of rules applied by the worklist driver. Subclasses are frozen dataclasses."""

    @abstractmethod
    def rules(self) -> Sequence[Rule]:
        """The rules, in priority order."""

    def run(self, graph: Graph) -> PassResult:
        return result_from_stats(apply_rules(graph, self.rules()))
