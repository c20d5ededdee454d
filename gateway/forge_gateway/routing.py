"""Which expert serves a request: the expert catalog and the resolver behind ``model``.

The catalog merges experts registered by plugins (``register_experts``) with the registry file,
which wins on a name clash and is re-read when its mtime changes, so ``forge-train --register``
or an admin call is picked up by a running gateway. ``model`` may name the base model, an expert,
or ``"auto"`` (the configured classifier decides; among experts of one specialization the ranking of
:func:`forge_sdk.experts.best_expert` does, and the reason says which rule: ``...:rank=trained>alias``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import anyio
import structlog

from forge_gateway.engines.base import LoraSpec
from forge_sdk.classifiers import Classifier
from forge_sdk.errors import ConfigurationError, ExpertUnavailableError, ModelNotFoundError
from forge_sdk.experts import ExpertModel, ExpertRegistry, stamped

__all__ = [
    "AUTO",
    "LORA_OFF",
    "ExpertCatalog",
    "LoraState",
    "Target",
    "header_value",
    "route_header_pairs",
    "route_headers",
]

AUTO = "auto"
log = structlog.get_logger("forge_gateway.routing")


@dataclass(slots=True)
class Target:
    """Where one request goes and why."""

    model: str
    """Name echoed in the response's ``model`` field."""
    expert: ExpertModel | None
    """The expert, or None for the base model itself."""
    reason: str
    """``requested``, ``router:<classifier>:<why>[:rank=<rule>]``, or ``fallback:<why>``."""
    confidence: float | None = None
    lora: LoraSpec | None = None
    rank: str = ""
    """The ranking rule that picked the expert among those of its specialization (a key of
    :data:`forge_sdk.experts.RANK_RULES`), or empty."""

    @property
    def expert_name(self) -> str:
        return self.expert.name if self.expert else self.model


# What may stand in a header value as it is: visible ASCII and space, except "%" (the escape).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_HEADER_MAX = 256
"""Longest header value built from data (a classifier's reason could be any length)."""


def header_value(text: str) -> str:
    """``text`` as a safe header value: anything outside visible ASCII percent-encoded as UTF-8.

    Route reasons carry classifier output built from expert keywords (``keyword:积分``) and plugin
    text; a raw non-Latin-1 character made the server fail (500) and a control character made it
    drop the connection, and CR/LF would split the header. Percent-encoding keeps every value
    Latin-1 (ASCII even) and readable back with ``urllib.parse.unquote``.
    """
    encoded = quote(text.strip(), safe=_HEADER_SAFE)[:_HEADER_MAX]
    if "%" in encoded[-2:]:  # never end in half an escape
        encoded = encoded[: encoded.rindex("%")]
    return encoded


def route_headers(target: Target) -> dict[str, str]:
    """Response headers that say which expert served a request and why (safe values: ``header_value``)."""
    headers = {
        "x-forge-expert": header_value(target.expert_name),
        "x-forge-route-reason": header_value(target.reason),
    }
    if target.confidence is not None:
        headers["x-forge-route-confidence"] = f"{target.confidence:.3f}"
    return headers


def route_header_pairs(target: Target) -> list[tuple[bytes, bytes]]:
    """:func:`route_headers` as raw ASGI header pairs."""
    return [(name.encode(), value.encode("latin-1")) for name, value in route_headers(target).items()]


LORA_OFF = (
    "this gateway runs without LoRA (--no-lora, engine.enable_lora = false); restart it without "
    "--no-lora to serve adapter experts"
)
"""Why an adapter expert cannot be served, and what to do (one place for the API's messages)."""

LoraState = Literal["on", "off", "starting", "failed", "disabled"]
"""Whether adapter experts can be served: ``on`` (the engine has LoRA); ``off`` (not yet: the first
adapter expert registered starts a LoRA engine, ``enable_lora = "auto"``); ``starting`` (that engine
is being built: requests for adapters wait for it); ``failed`` (that build failed); ``disabled``
(``--no-lora``, or an engine that cannot serve adapters)."""


class ExpertCatalog:
    """The experts this gateway serves, kept in sync with the registry file.

    Args:
        base_model_name: the name the base model is served under.
        plugin_experts: experts registered by plugins.
        registry_path: registry JSON file to merge and watch (optional).
        lora_enabled: whether adapter experts can be served (the engine supports LoRA); the
            gateway's :class:`~forge_gateway.lora_switch.LoraSwitch` moves ``lora_state`` on from there.
        standalone_enabled: whether standalone experts (``model_path``) can get their own engine.
    """

    def __init__(
        self,
        base_model_name: str,
        plugin_experts: list[ExpertModel],
        registry_path: str | None,
        *,
        lora_enabled: bool,
        default_expert: str = "general",
        standalone_enabled: bool = False,
    ) -> None:
        self.base_model_name = base_model_name
        self.default_expert = default_expert
        self.lora_enabled = lora_enabled
        self.lora_state: LoraState = "on" if lora_enabled else "disabled"
        self.lora_off_reason = LORA_OFF
        """Why adapters are unservable while ``lora_state`` is ``disabled`` or ``failed``."""
        self.standalone_enabled = standalone_enabled
        self._plugin_experts = {e.name: e for e in plugin_experts}
        self.registry = ExpertRegistry(registry_path) if registry_path else None
        self._mtime = self.registry.mtime() if self.registry else None
        self._loras: dict[tuple[str, str], LoraSpec] = {}
        self._next_lora_id = 0
        self._lock = threading.RLock()
        self.experts: dict[str, ExpertModel] = {}
        self.classifier: Classifier | None = None
        self.on_change: list[Callable[[dict[str, ExpertModel], dict[str, ExpertModel]], None]] = []
        self._rebuild()
        self._last_check = time.monotonic()

    # --- catalog ---------------------------------------------------------------------------

    def _merged(self) -> dict[str, ExpertModel]:
        experts = dict(self._plugin_experts)
        if self.registry:
            experts.update(self.registry.experts)
        clash = experts.get(self.base_model_name)
        if clash is not None and clash.kind != "base":
            raise ConfigurationError(f"expert name {self.base_model_name!r} clashes with the base model name")
        return experts

    def _rebuild(self) -> None:
        experts = self._merged()
        old, self.experts = self.experts, experts
        if self.classifier is not None:
            self.classifier.update_experts(list(experts.values()))
        for callback in self.on_change:
            callback(old, experts)

    def refresh(self, *, force: bool = False, min_interval: float = 0.5) -> bool:
        """Re-read the registry file if it changed; True when the catalog changed.

        Cheap to call per request: it stats the file at most every ``min_interval`` seconds.
        """
        if self.registry is None:
            return False
        now = time.monotonic()
        if not force and now - self._last_check < min_interval:
            return False
        self._last_check = now
        mtime = self.registry.mtime()
        if not force and mtime == self._mtime:
            return False
        with self._lock:
            previous = dict(self.registry.experts)
            try:
                if mtime is not None:
                    self.registry.load()
                else:
                    self.registry.experts = {}
                self._merged()
            except ConfigurationError as exc:
                # A broken edit must not take the gateway down: keep serving the last good set.
                self.registry.experts = previous
                log.error("registry_reload_failed", error=exc.message)
                self._mtime = mtime
                return False
            self._mtime = mtime
            self._rebuild()
        log.info("registry_reloaded", experts=sorted(self.experts))
        return True

    def register(self, expert: ExpertModel) -> None:
        """Add or replace an expert at runtime (persisted when there is a registry file).

        Raises:
            ConfigurationError: the name clashes with the base model.
        """
        if expert.name == self.base_model_name and expert.kind != "base":
            raise ConfigurationError(f"expert name {expert.name!r} clashes with the base model name")
        # Pick up edits made to the file by others first, so saving cannot overwrite them.
        self.refresh(force=True)
        with self._lock:
            if self.registry:
                self.registry.register(expert)
                self._mtime = self.registry.mtime()
            else:
                self._plugin_experts[expert.name] = stamped(expert, self.experts.values())
            self._rebuild()

    def unregister(self, name: str) -> None:
        """Remove an expert at runtime.

        Raises:
            ModelNotFoundError: no such expert.
        """
        self.refresh(force=True)
        with self._lock:
            if self.registry and name in self.registry.experts:
                self.registry.unregister(name)
                self._mtime = self.registry.mtime()
            elif name in self._plugin_experts:
                del self._plugin_experts[name]
            else:
                raise ModelNotFoundError(f"no expert named {name!r}", param="name")
            self._rebuild()

    def lora_for(self, expert: ExpertModel) -> LoraSpec | None:
        """The engine LoRA handle of an adapter expert.

        Ids are stable per (name, adapter folder): re-registering a name with another folder gets
        a fresh id, because engines cache adapter weights by id.
        """
        if expert.kind != "adapter" or not expert.adapter_path:
            return None
        path = str(Path(expert.adapter_path).expanduser())
        key = (expert.name, path)
        spec = self._loras.get(key)
        if spec is None:
            with self._lock:
                spec = self._loras.get(key)
                if spec is None:
                    self._next_lora_id += 1
                    spec = self._loras[key] = LoraSpec(expert.name, path, self._next_lora_id)
        return spec

    def loaded_loras(self, name: str) -> list[LoraSpec]:
        """Every handle ever given out for expert ``name`` (to unload them all)."""
        return [spec for (n, _), spec in self._loras.items() if n == name]

    def servable(self, expert: ExpertModel) -> bool:
        """Whether this gateway can serve the expert at all."""
        if expert.kind == "adapter":
            return self.lora_state in ("on", "off", "starting")
        if expert.kind == "standalone":
            return self.standalone_enabled
        return expert.kind in ("base", "remote")

    # --- resolution ------------------------------------------------------------------------

    def resolve(self, model: str, query: Callable[[], str], allowed: Collection[str] | None = None) -> Target:
        """Map a request's ``model`` to a target.

        Args:
            model: the request's ``model`` field.
            query: returns the text to classify (called only for ``auto``).
            allowed: the caller's allow list (None: everything); ``auto`` keeps to it, see :meth:`route`.

        Raises:
            ModelNotFoundError: ``model`` names nothing served here.
        """
        self.refresh()
        if model == self.base_model_name:
            return Target(model, None, "requested")
        expert = self.experts.get(model)
        if expert is not None:
            if not self.servable(expert):
                why = (
                    self.lora_off_reason
                    if expert.kind == "adapter"
                    else "standalone experts need a model engine"
                )
                raise ModelNotFoundError(
                    f"expert {model!r} is registered but cannot be served here: {why}", param="model"
                )
            return Target(model, expert, "requested", lora=self.lora_for(expert))
        if model == AUTO:
            return self.route(query(), allowed)
        raise ModelNotFoundError(
            f"The model `{model}` does not exist. Served: {', '.join(self.model_names())}", param="model"
        )

    async def aresolve(
        self, model: str, query: Callable[[], str], allowed: Collection[str] | None = None
    ) -> Target:
        """:meth:`resolve` for the event loop: a heavy classifier runs in a worker thread."""
        if model == AUTO and self.classifier is not None and self.classifier.heavy:
            return await anyio.to_thread.run_sync(self.resolve, model, query, allowed)
        return self.resolve(model, query, allowed)

    async def aroute(self, text: str, allowed: Collection[str] | None = None) -> Target:
        """:meth:`route` for the event loop (heavy classifiers and long texts go to a thread)."""
        heavy = self.classifier is not None and self.classifier.heavy
        if heavy or len(text) > 4096:
            return await anyio.to_thread.run_sync(self.route, text, allowed)
        return self.route(text, allowed)

    def route(self, text: str, allowed: Collection[str] | None = None) -> Target:
        """Classify ``text`` and return the chosen expert (the base model when nothing can route).

        With an ``allowed`` list that does not name ``auto`` (a key limited to some experts), a
        choice outside the list goes to the default expert, else the base model, when the list
        names them; otherwise the choice stands and the caller's authorization refuses it.
        """
        target = self._route(text)
        if allowed is None or AUTO in allowed or target.expert_name in allowed:
            return target
        default = self.experts.get(self.default_expert)
        if default is not None and default.name in allowed and self.servable(default):
            why = f"{target.reason}:not-allowed:{target.expert_name}"
            return Target(default.name, default, why, target.confidence, self.lora_for(default))
        if self.base_model_name in allowed:
            return Target(self.base_model_name, None, f"{target.reason}:not-allowed:{target.expert_name}")
        return target

    def _route(self, text: str) -> Target:
        if self.classifier is None or not self.experts:
            return Target(self.base_model_name, None, "router:none", 1.0)
        decision = self.classifier.classify_with_confidence(text)
        expert = self.experts.get(decision.expert)
        reason = f"router:{self.classifier.name}"
        if decision.reason:
            reason += f":{decision.reason}"
        if decision.rank:
            reason += f":rank={decision.rank}"
        if expert is None or not self.servable(expert):
            target = Target(decision.expert, expert, reason, decision.confidence)
            return self.fallback(target, "unservable")
        return Target(expert.name, expert, reason, decision.confidence, self.lora_for(expert), decision.rank)

    def fallback(self, target: Target, why: str) -> Target:
        """Re-target a request whose expert is unavailable to the default expert (SDD §9.2).

        Raises:
            ExpertUnavailableError: the default expert is the one that failed, or is remote too.
        """
        default = self.experts.get(self.default_expert)
        failed = target.expert_name
        if default is None:
            return Target(self.base_model_name, None, f"fallback:{failed}-{why}")
        if default.name == failed or default.kind == "remote" or not self.servable(default):
            raise ExpertUnavailableError(
                f"expert {failed!r} is unavailable ({why}) and no local fallback exists"
            )
        return Target(default.name, default, f"fallback:{failed}-{why}", lora=self.lora_for(default))

    def model_names(self, *, aliases: bool = True) -> list[str]:
        """Base model first, then every servable expert, then ``auto``.

        Args:
            aliases: include experts that are the base model under another name (no weights of
                their own); they still resolve when named either way.
        """
        names = [self.base_model_name]
        names += [
            name for name, e in self.experts.items() if self.servable(e) and (aliases or e.has_own_weights)
        ]
        return [*names, AUTO]
