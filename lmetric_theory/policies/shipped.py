"""The routing policies as their routers ship them: llm-d's endpoint picker and the paper's
``Predictor`` baseline.

``llm-d`` runs an ``EndpointPickerConfig`` (the llm-d router's scheduling profile: filters,
then weighted scorers, then a picker) on the router's view. Three profiles are built in, each
written as the ``EndpointPickerConfig`` its source ships and read by the same parser as a
user's ``config=FILE``:

- ``optimized-baseline`` - llm-d's ``guides/optimized-baseline`` router values:
  ``prefix-cache-affinity-filter`` then ``token-load-scorer``, plugins at their defaults;
- ``gie-default`` - the Gateway API Inference Extension endpoint picker's default plugins
  (``default-plugins.yaml`` of the router chart): ``queue-scorer`` 2,
  ``kv-cache-utilization-scorer`` 2, ``prefix-cache-scorer`` 3;
- ``no-hit-lru`` - the llm-d router's well-known ``optimized-baseline`` test config
  (``test/integration/epp/wellknown_configs_test.go``): the three above plus
  ``no-hit-lru-scorer`` 2.

Every plugin's rule, in the router's signals (``docs/policies.md`` has the sources):

- ``queue-scorer``: ``(max w - w_i) / (max w - min w)``, 1 when all are equal (``w`` =
  engine-reported waiting requests);
- ``kv-cache-utilization-scorer``: ``1 - kv_usage_i``;
- ``prefix-cache-scorer``: ``(1 - m) * hit_i / full + m * min(1, hit_i * s / L)^2`` with
  ``full = floor(T / s)`` prompt blocks (0 when ``full = 0``), ``m`` = ``matchLengthWeight``
  (default 0), ``L`` = ``matchLengthScaleTokens`` (8192);
- ``token-load-scorer``: ``1 - min(q_i + n_i, Q) / Q`` (1 when ``q_i + n_i <= 0``), ``q`` =
  router-counted queued prefill tokens, ``n`` = the request's new tokens, ``Q`` =
  ``queueThresholdTokens`` (4194304);
- ``no-hit-lru-scorer``: a cold request (no instance holds a block of its prefix) scores
  instance ``i`` ``1 - rank_i / (N - 1)``, never-used instances first (in index order), then
  the used ones from least to most recently picked for a cold request; a warm request
  scores every instance 1/2;
- ``prefix-cache-affinity-filter``: keep the instances whose prefix-cache match ratio
  ``hit_i / full`` is ``>= affinityThreshold`` (0.80), unless none is, or with probability
  ``explorationProbability`` (0), or when the best kept instance's estimated TTFT
  ``1000 * q_i / peakPrefillThroughput`` ms exceeds the best other one's by more than
  ``maxTTFTPenaltyMs`` (18000; ``peakPrefillThroughput`` 15928 tokens/s);
- ``max-score-picker``: argmax of ``sum weight * clamp(score, 0, 1)``, ties broken at random
  (the picker shuffles, then sorts stably).

``predictor`` is the artefact's ``join-shortest-q-ttft``: each instance's projected TTFT for
the request, least wins. The projection uses the simulator's own latency model (bound by the
engine through :meth:`Predictor.bind_cluster`): the instance's queued prefill tokens plus the
request's new tokens, prefilled in chunks of the token budget less its running sequences,
each chunk an iteration of :meth:`~lmetric_theory.sim.latency.LatencyModel.step_end`.

Scores are exact (:class:`fractions.Fraction`); the predictor's TTFT is a float truncated to
integer milliseconds as the artefact does (``ttft as u32``).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from lmetric_theory.core import signals as sig
from lmetric_theory.core.definitions import PDefinition
from lmetric_theory.policies.baselines import (
    CatalogPolicy,
    _check_tie,
    catalog_tie_field,
    select,
)

__all__ = [
    "EPP_PROFILES",
    "EPP_SUPPORTED_PLUGINS",
    "EppConfig",
    "EppConfigError",
    "LlmD",
    "Predictor",
    "SHIPPED_POLICIES",
    "load_epp_config",
    "parse_epp_config",
]

_LLMD = "llm-d/llm-d-router"
_GUIDE = "llm-d/llm-d guides/optimized-baseline/router/optimized-baseline.values.yaml"

# --------------------------------------------------------------------------- profiles

#: The built-in profiles, each as the ``EndpointPickerConfig`` text its source ships.
EPP_PROFILES: dict[str, str] = {
    "optimized-baseline": """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
- type: inflight-load-producer
- type: prefix-cache-affinity-filter
- type: token-load-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: token-load-scorer
""",
    "gie-default": """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
""",
    "no-hit-lru": """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: no-hit-lru-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: no-hit-lru-scorer
    weight: 2
""",
}


class EppConfigError(ValueError):
    """A bad ``EndpointPickerConfig``: the message names the file, the line and the key."""


# ---------------------------------------------------------------- YAML with line numbers


@dataclass(frozen=True, slots=True)
class _Node:
    """A YAML value with the 1-based line it starts on (mappings: ``{key: _Node}``)."""

    value: Any
    line: int


def _read_yaml(text: str, where: str) -> _Node:
    """The YAML document ``text`` as :class:`_Node` values (duplicate keys refused)."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise EppConfigError(f"{where}{line}: malformed YAML: {problem}") from None
    if root is None:
        raise EppConfigError(f"{where}: empty document, expected an EndpointPickerConfig")
    ctor = yaml.SafeLoader("")

    def walk(node: Any) -> _Node:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, _Node] = {}
            for k, v in node.value:
                key = ctor.construct_object(k) if isinstance(k, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    raise EppConfigError(f"{where}:{k.start_mark.line + 1}: keys must be strings")
                if key in out:
                    raise EppConfigError(f"{where}:{k.start_mark.line + 1}: key {key!r} given twice")
                out[key] = walk(v)
            return _Node(out, line)
        if isinstance(node, yaml.SequenceNode):
            return _Node([walk(x) for x in node.value], line)
        return _Node(ctor.construct_object(node), line)

    return walk(root)


def _mapping(node: _Node, where: str, what: str, keys: Sequence[str]) -> dict[str, _Node]:
    if not isinstance(node.value, dict):
        raise EppConfigError(f"{where}:{node.line}: {what} must be a mapping")
    for k, v in node.value.items():
        if k not in keys:
            raise EppConfigError(f"{where}:{v.line}: unknown key {k!r} in {what}; "
                                 f"valid keys: {', '.join(keys)}")
    return node.value


def _sequence(node: _Node, where: str, key: str) -> list[_Node]:
    if not isinstance(node.value, list):
        raise EppConfigError(f"{where}:{node.line}: key {key!r} must be a list")
    return node.value


def _string(node: _Node, where: str, key: str) -> str:
    if not isinstance(node.value, str) or not node.value.strip():
        raise EppConfigError(f"{where}:{node.line}: key {key!r} must be a non-empty string")
    return node.value


def _number(node: _Node, where: str, key: str, *, lo: Fraction | None = None,
            hi: Fraction | None = None, lo_open: bool = False) -> Fraction:
    """An exact number (a float as the decimal it prints as) within ``[lo, hi]``."""
    v = node.value
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise EppConfigError(f"{where}:{node.line}: key {key!r} must be a number, got {v!r}")
    if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
        raise EppConfigError(f"{where}:{node.line}: key {key!r} must be finite, got {v!r}")
    x = Fraction(repr(v)) if isinstance(v, float) else Fraction(v)
    if lo is not None and (x < lo or (lo_open and x == lo)):
        op = ">" if lo_open else ">="
        raise EppConfigError(f"{where}:{node.line}: key {key!r} must be {op} {lo}, got {v!r}")
    if hi is not None and x > hi:
        raise EppConfigError(f"{where}:{node.line}: key {key!r} must be <= {hi}, got {v!r}")
    return x


# ------------------------------------------------------------------------------ plugins


@dataclass(frozen=True, slots=True)
class _Param:
    """One plugin parameter: its default and its range."""

    default: Any
    lo: Fraction | None = None
    hi: Fraction | None = None
    lo_open: bool = False
    choices: tuple[str, ...] | None = None


#: Scorer, filter and picker plugins implemented, with their parameters and defaults (the
#: plugin's ``Config`` defaults in the llm-d router).
_PLUGIN_PARAMS: dict[str, dict[str, _Param]] = {
    "queue-scorer": {},
    "kv-cache-utilization-scorer": {},
    "prefix-cache-scorer": {
        "matchLengthWeight": _Param(Fraction(0), Fraction(0), Fraction(1)),
        "matchLengthScaleTokens": _Param(Fraction(8192), Fraction(0), lo_open=True),
    },
    "token-load-scorer": {
        "queueThresholdTokens": _Param(Fraction(4194304), Fraction(0), lo_open=True),
    },
    "no-hit-lru-scorer": {
        "lruSize": _Param(Fraction(1024), Fraction(0), lo_open=True),
    },
    "prefix-cache-affinity-filter": {
        "affinityThreshold": _Param(Fraction(4, 5), hi=Fraction(1)),
        "explorationProbability": _Param(Fraction(0), Fraction(0), Fraction(1)),
        "maxTTFTPenaltyMs": _Param(Fraction(18000), Fraction(0)),
        "ttftSource": _Param("prefillThroughput", choices=("prefillThroughput",)),
        "peakPrefillThroughput": _Param(Fraction(15928), Fraction(0)),
    },
    "max-score-picker": {
        "maxNumOfEndpoints": _Param(Fraction(1), Fraction(1), Fraction(1)),
    },
}

#: Data producers: in this simulator the router's view is the producer (the prefix match
#: and the in-flight load come from it), so these are accepted and their parameters ignored.
_PRODUCERS: tuple[str, ...] = ("approx-prefix-cache-producer", "inflight-load-producer",
                               "token-producer", "single-profile-handler")

#: Every plugin type a config may name.
EPP_SUPPORTED_PLUGINS: tuple[str, ...] = tuple(sorted((*_PLUGIN_PARAMS, *_PRODUCERS)))

_SCORERS = ("queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer",
            "token-load-scorer", "no-hit-lru-scorer")


@dataclass(frozen=True, slots=True)
class EppPlugin:
    """One configured plugin: its ``type``, ``name`` and typed parameters."""

    type: str
    name: str
    params: tuple[tuple[str, Any], ...]

    def get(self, key: str) -> Any:
        """The parameter ``key`` (its default when the config does not set it)."""
        return dict(self.params)[key]


@dataclass(frozen=True, slots=True)
class EppConfig:
    """A validated scheduling profile: filters in order, weighted scorers, the picker."""

    filters: tuple[EppPlugin, ...]
    scorers: tuple[tuple[EppPlugin, Fraction], ...]
    picker: EppPlugin


def _plugin(node: _Node, where: str) -> EppPlugin:
    m = _mapping(node, where, "a plugin", ("type", "name", "parameters"))
    if "type" not in m:
        raise EppConfigError(f"{where}:{node.line}: plugin without key 'type'")
    kind = _string(m["type"], where, "type")
    if kind not in EPP_SUPPORTED_PLUGINS:
        raise EppConfigError(f"{where}:{m['type'].line}: key 'type': unsupported plugin {kind!r}; "
                             f"supported plugins: {', '.join(EPP_SUPPORTED_PLUGINS)}")
    name = _string(m["name"], where, "name") if "name" in m else kind
    if kind in _PRODUCERS:
        return EppPlugin(kind, name, ())
    spec = _PLUGIN_PARAMS[kind]
    given: dict[str, _Node] = {}
    if "parameters" in m and m["parameters"].value is not None:
        given = _mapping(m["parameters"], where, f"the parameters of {kind!r}", tuple(spec))
    params = []
    for key, p in spec.items():
        if key not in given:
            params.append((key, p.default))
        elif p.choices is not None:
            v = _string(given[key], where, key)
            if v not in p.choices:
                raise EppConfigError(f"{where}:{given[key].line}: key {key!r}: {v!r} is not "
                                     f"supported; supported: {', '.join(p.choices)}")
            params.append((key, v))
        else:
            params.append((key, _number(given[key], where, key, lo=p.lo, hi=p.hi,
                                        lo_open=p.lo_open)))
    out = EppPlugin(kind, name, tuple(params))
    if kind == "prefix-cache-affinity-filter" and out.get("maxTTFTPenaltyMs") > 0 \
            and out.get("peakPrefillThroughput") == 0:
        line = given["peakPrefillThroughput"].line
        raise EppConfigError(f"{where}:{line}: key 'peakPrefillThroughput' must be > 0 when "
                             "maxTTFTPenaltyMs > 0")
    return out


def parse_epp_config(text: str, where: str) -> EppConfig:
    """Validate an ``EndpointPickerConfig`` document.

    Parameters
    ----------
    text : str
        The YAML text.
    where : str
        What to call it in messages (the file name).

    Returns
    -------
    EppConfig
        Its one scheduling profile (the picker defaults to ``max-score-picker``, a scorer's
        weight to 1, as the llm-d router's config loader does).

    Raises
    ------
    EppConfigError
        Malformed YAML, an unknown key, a missing or unknown plugin, a value out of range, or
        more than one scheduling profile; the message is ``where:LINE: ...``.
    """
    root = _read_yaml(text, where)
    top = _mapping(root, where, "the EndpointPickerConfig",
                   ("apiVersion", "kind", "plugins", "schedulingProfiles"))
    if "kind" in top and top["kind"].value != "EndpointPickerConfig":
        raise EppConfigError(f"{where}:{top['kind'].line}: key 'kind' must be "
                             f"EndpointPickerConfig, got {top['kind'].value!r}")
    for key in ("plugins", "schedulingProfiles"):
        if key not in top:
            raise EppConfigError(f"{where}:{root.line}: key {key!r} is missing")
    plugins: dict[str, EppPlugin] = {}
    for item in _sequence(top["plugins"], where, "plugins"):
        p = _plugin(item, where)
        if p.name in plugins:
            raise EppConfigError(f"{where}:{item.line}: key 'name': plugin {p.name!r} defined twice")
        plugins[p.name] = p
    profiles = _sequence(top["schedulingProfiles"], where, "schedulingProfiles")
    if len(profiles) != 1:
        raise EppConfigError(f"{where}:{top['schedulingProfiles'].line}: key 'schedulingProfiles': "
                             f"exactly one profile is supported, got {len(profiles)}")
    prof = _mapping(profiles[0], where, "a scheduling profile", ("name", "plugins"))
    if "plugins" not in prof:
        raise EppConfigError(f"{where}:{profiles[0].line}: scheduling profile without key 'plugins'")
    filters: list[EppPlugin] = []
    scorers: list[tuple[EppPlugin, Fraction]] = []
    picker: EppPlugin | None = None
    for ref in _sequence(prof["plugins"], where, "plugins"):
        r = _mapping(ref, where, "a plugin reference", ("pluginRef", "weight"))
        if "pluginRef" not in r:
            raise EppConfigError(f"{where}:{ref.line}: plugin reference without key 'pluginRef'")
        name = _string(r["pluginRef"], where, "pluginRef")
        if name not in plugins:
            raise EppConfigError(f"{where}:{r['pluginRef'].line}: key 'pluginRef': {name!r} is not "
                                 f"a plugin of this config; defined: {', '.join(plugins)}")
        p = plugins[name]
        if "weight" in r and p.type not in _SCORERS:
            raise EppConfigError(f"{where}:{r['weight'].line}: key 'weight': {name!r} is a "
                                 f"{p.type}, not a scorer")
        if p.type in _SCORERS:
            w = _number(r["weight"], where, "weight", lo=Fraction(0)) if "weight" in r else Fraction(1)
            scorers.append((p, w))
        elif p.type == "prefix-cache-affinity-filter":
            filters.append(p)
        elif p.type == "max-score-picker":
            if picker is not None:
                raise EppConfigError(f"{where}:{ref.line}: key 'pluginRef': a second picker")
            picker = p
    if picker is None:
        picker = EppPlugin("max-score-picker", "max-score-picker", (("maxNumOfEndpoints", Fraction(1)),))
    return EppConfig(tuple(filters), tuple(scorers), picker)


def load_epp_config(path: str) -> EppConfig:
    """Read and validate the ``EndpointPickerConfig`` YAML file ``path`` (see
    :func:`parse_epp_config`); an unreadable file is an :class:`EppConfigError` too."""
    from lmetric_theory.core.fileio import TextFileError, read_text

    try:
        text = read_text(path, "EndpointPickerConfig")
    except (OSError, TextFileError) as exc:
        raise EppConfigError(f"{path}: cannot read the config: {exc}") from None
    return parse_epp_config(text, path)


# ----------------------------------------------------------------------------- scoring


def prefix_match_ratio(view: Any) -> list[Fraction]:
    """``hit_i / floor(T / s)`` per instance (0 when the prompt has no full block): the
    prefix producer's ``MatchBlocks / TotalBlocks``, exact."""
    full = int(sig.full_prompt_blocks(view))
    if full <= 0:
        return [Fraction(0)] * len(sig.hit_blocks(view))
    return [Fraction(min(int(h), full), full) for h in sig.hit_blocks(view)]


def token_load(view: Any) -> list[int]:
    """``q_i + n_i``: router-counted queued prefill tokens plus the request's new tokens
    (the in-flight producer's ``InFlightLoad.Tokens + UncachedRequestTokens``), tokens."""
    return sig.prefill_signal(view, PDefinition.ROUTER_QUEUED_PLUS_NEW).tolist()


def _queue_scores(view: Any, p: EppPlugin, lru: Any) -> list[Fraction]:
    w = [max(int(x), 0) for x in view.waiting]
    lo, hi = min(w), max(w)
    if hi == lo:
        return [Fraction(1)] * len(w)
    return [Fraction(hi - x, hi - lo) for x in w]


def _kv_scores(view: Any, p: EppPlugin, lru: Any) -> list[Fraction]:
    return [1 - Fraction(float(u)) for u in view.kv_usage]


def _prefix_scores(view: Any, p: EppPlugin, lru: Any) -> list[Fraction]:
    m, scale = p.get("matchLengthWeight"), p.get("matchLengthScaleTokens")
    ratio = prefix_match_ratio(view)
    if m == 0:
        return ratio
    s = sig._block(view)
    length = [min(Fraction(1), Fraction(int(h) * s) / scale) ** 2 for h in sig.hit_blocks(view)]
    return [(1 - m) * r + m * x for r, x in zip(ratio, length, strict=True)]


def _token_load_scores(view: Any, p: EppPlugin, lru: Any) -> list[Fraction]:
    q = p.get("queueThresholdTokens")
    return [Fraction(1) if t <= 0 else 1 - min(Fraction(t), q) / q for t in token_load(view)]


def _lru_scores(view: Any, p: EppPlugin, lru: _NoHitLru) -> list[Fraction]:
    return lru.scores(view)


_SCORE: dict[str, Callable[[Any, EppPlugin, Any], list[Fraction]]] = {
    "queue-scorer": _queue_scores,
    "kv-cache-utilization-scorer": _kv_scores,
    "prefix-cache-scorer": _prefix_scores,
    "token-load-scorer": _token_load_scores,
    "no-hit-lru-scorer": _lru_scores,
}


def is_cold(view: Any) -> bool:
    """No instance holds a block of the request's prefix (``no-hit-lru-scorer``'s test)."""
    return not any(int(h) > 0 for h in sig.hit_blocks(view))


class _NoHitLru:
    """The ``no-hit-lru-scorer``'s state: instances picked for cold requests, least recently
    picked first, at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.order: OrderedDict[int, None] = OrderedDict()

    def scores(self, view: Any) -> list[Fraction]:
        n = len(view.waiting)
        if not is_cold(view):
            return [Fraction(1, 2)] * n
        if n == 1:
            return [Fraction(1)]
        pos = {i: k for k, i in enumerate(self.order)}
        never = [i for i in range(n) if i not in pos]
        rank = {i: k for k, i in enumerate(never)}
        for i in range(n):
            if i in pos:
                rank[i] = len(never) + pos[i]
        return [max(1 - Fraction(rank[i], n - 1), Fraction(0)) for i in range(n)]

    def picked(self, i: int) -> None:
        self.order.pop(i, None)
        self.order[i] = None
        while len(self.order) > self.size:
            self.order.popitem(last=False)


def _affinity_filter(view: Any, p: EppPlugin, cand: list[int], rng: Any) -> list[int]:
    """``prefix-cache-affinity-filter`` over the candidate instances ``cand``."""
    thr = p.get("affinityThreshold")
    if len(cand) <= 1 or thr <= 0:
        return cand
    explore = p.get("explorationProbability")
    if explore > 0 and rng.random() < explore:
        return cand
    ratio = prefix_match_ratio(view)
    sticky = [i for i in cand if ratio[i] >= thr]
    if not sticky:
        return cand
    rest = [i for i in cand if ratio[i] < thr]
    penalty = p.get("maxTTFTPenaltyMs")
    if penalty > 0 and rest:
        q = sig.router_queued(view).tolist()  # InFlightLoad.Tokens: without this request
        peak = p.get("peakPrefillThroughput")
        # 1000 * q / peak ms: break stickiness when best sticky - best other > penalty
        if 1000 * (min(q[i] for i in sticky) - min(q[i] for i in rest)) > penalty * peak:
            return cand
    return sticky


# ------------------------------------------------------------------------------ policies


@dataclass(frozen=True, slots=True)
class LlmDParams:
    """``llm-d``: a built-in ``profile`` or a user's ``config`` (an ``EndpointPickerConfig``
    YAML file, which then replaces the profile), and the picker's ``tie`` rule (default
    ``random``, the ``max-score-picker``'s)."""

    profile: str = dataclasses.field(default="optimized-baseline",
                                     metadata={"choices": tuple(EPP_PROFILES)})
    config: str = ""
    tie: str = catalog_tie_field("random")

    def __post_init__(self) -> None:
        _check_tie(self.tie)
        if self.profile not in EPP_PROFILES:
            raise ValueError(f"profile: {self.profile!r} is not one of {', '.join(EPP_PROFILES)}")
        if self.config:
            load_epp_config(self.config)  # a bad file fails when the spec is read


class LlmD(CatalogPolicy):
    """The llm-d endpoint picker running one scheduling profile on the router's view."""

    name = "llm-d"
    formula = ("EndpointPickerConfig profile: filters, then argmax sum_k weight_k * "
               "clamp(score_k, 0, 1) (max-score-picker, random tie); profile=optimized-baseline: "
               "prefix-cache-affinity-filter (hit/full >= 0.8, TTFT gate 1000 * queued_tokens / "
               "15928 ms, 18000 ms) then token-load-scorer 1 - (queued_tokens + new_tokens) / "
               "4194304; profile=gie-default: queue 2, kv-cache-utilization 2, prefix-cache 3; "
               "profile=no-hit-lru: + no-hit-lru 2; config=FILE: a user's profile")
    source = (f"{_GUIDE}; {_LLMD}: config/charts/routerlib/templates/_config.yaml "
              "(default-plugins.yaml), test/integration/epp/wellknown_configs_test.go, "
              "pkg/epp/framework/plugins/scheduling/{filter/prefixcacheaffinity,scorer/tokenload,"
              "scorer/queuedepth,scorer/kvcacheutilization,scorer/prefix,scorer/nohitlru,"
              "picker/maxscore}, pkg/epp/scheduling/scheduler_profile.go")
    signals = ("waiting", "kv_usage", "hit_blocks", "block_size", "input_tokens", "router_queued")
    Params = LlmDParams

    def __init__(self, params: LlmDParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        if params.config:
            self.config = load_epp_config(params.config)
        else:
            self.config = parse_epp_config(EPP_PROFILES[params.profile], f"profile {params.profile}")
        size = next((int(p.get("lruSize")) for p, _ in self.config.scorers
                     if p.type == "no-hit-lru-scorer"), 1024)
        self._lru = _NoHitLru(size)

    def candidates(self, view: Any) -> list[int]:
        """The instances left after the profile's filters, in index order."""
        cand = list(range(len(view.waiting)))
        for f in self.config.filters:
            cand = _affinity_filter(view, f, cand, self.rng)
        return cand

    def scores(self, view: Any) -> list[Fraction]:
        """Weighted score per instance: ``sum weight * clamp(score, 0, 1)``, exact."""
        total = [Fraction(0)] * len(view.waiting)
        for p, w in self.config.scorers:
            for i, s in enumerate(_SCORE[p.type](view, p, self._lru)):
                total[i] += w * min(max(s, Fraction(0)), Fraction(1))
        return total

    def choose(self, view: Any) -> int:
        cold = is_cold(view)
        i = select(self.scores(view), self.candidates(view), maximize=True,
                   tie=self.params.tie, rng=self.rng)
        if cold:  # the no-hit-lru scorer's PreRequest: the pick is the most recent
            self._lru.picked(i)
        return i


@dataclass(frozen=True, slots=True)
class PredictorParams:
    """``predictor``: ``scale`` turns the projected TTFT in seconds into the integer the
    artefact compares (1000: whole milliseconds, ``ttft as u32``; 0: exact float) and the
    tie rule (``rust``: first minimum)."""

    scale: int = 1000
    tie: str = catalog_tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)
        if self.scale < 0:
            raise ValueError(f"scale must be >= 0, got {self.scale}")


class Predictor(CatalogPolicy):
    """Join the instance with the least projected TTFT (the artefact's ``Predictor``)."""

    name = "predictor"
    formula = ("argmin trunc(scale * ttft_i), ttft_i = k * step(C - d_i) + step(r) with "
               "W = max(queued_tokens + new_tokens, 1) = k * (C - d_i) + r, C = token budget, "
               "d_i = running, step(x) = the latency model's iteration with x prefill tokens, "
               "d_i decodes and all_tokens KV read")
    source = ("blitz-serving/blitz-router: router/src/scheduler/policies (join-shortest-q-ttft: "
              "JSQTTFTQueue, AssignScore::Least(ttft as u32) from the replica simulator's "
              "query_sim), router/src/simulator/predictor.rs; blitz-serving/MetricsTestRunner "
              "plotting: 'join-shortest-q-ttft' -> 'Predictor'")
    signals = ("router_queued", "hit_blocks", "block_size", "input_tokens", "running",
               "router_all_tokens")
    Params = PredictorParams

    def __init__(self, params: PredictorParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._latency: Any = None
        self._budget = 0

    def bind_cluster(self, latency: Any, token_budget: int) -> None:
        """Give the predictor the cluster's latency model (anything with ``step_end``) and
        token budget per iteration, tokens (the engines call this before routing)."""
        self._latency = latency
        self._budget = int(token_budget)

    def ttft(self, view: Any) -> list[float]:
        """Projected TTFT of the request on each instance, seconds."""
        if self._latency is None:
            raise RuntimeError("predictor has no latency model: the engine binds it with "
                               "bind_cluster(latency, token_budget) before routing")
        step = self._latency.step_end
        out = []
        for w, d, kv in zip(token_load(view), (max(int(x), 0) for x in view.running),
                            (max(int(x), 0) for x in view.router_all_tokens), strict=True):
            w = max(w, 1)
            per = max(self._budget - d, 1)
            k, r = divmod(w, per)
            t = k * step(0.0, per, d, kv, 0.0) if k else 0.0
            out.append(t + (step(0.0, r, d, kv, 0.0) if r else 0.0))
        return out

    def choose(self, view: Any) -> int:
        t = self.ttft(view)
        k = self.params.scale
        keys = [int(k * x) for x in t] if k > 0 else t
        return select(keys, maximize=False, tie=self.params.tie, rng=self.rng)


#: The shipped policies, in the order of ``docs/policies.md``.
SHIPPED_POLICIES: tuple[type[CatalogPolicy], ...] = (LlmD, Predictor)

