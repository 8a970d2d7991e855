"""Metric label values bounded by the config, whatever names clients send.

A client may address any ``provider/model`` directly, so the model (and the group,
which is then that string) is chosen by the caller. Used as a label as is, every new
name makes new series: 3,000 requests for unique names grew ``/metrics`` to 78 MB.
So a label carries a model only if the config names it for that provider (a group
member, a key's ``models`` list, or a ``pricing`` entry); any other is ``other``, and a
direct group becomes ``provider/other``. The series count is then bounded by the config.
The access log still records the name the client sent.
"""

from __future__ import annotations

from typing import Final

from ..config import Config

__all__ = ["OTHER", "LabelNames"]

OTHER: Final = "other"


class LabelNames:
    """The names one config allows in labels; built once per config (``RouterState``)."""

    __slots__ = ("_groups", "_models")

    def __init__(self, cfg: Config) -> None:
        models: dict[str, set[str]] = {name: set(cfg.pricing) for name in cfg.providers}
        for group in cfg.groups.values():
            for member in group.members:
                models.setdefault(member.provider, set()).add(member.model)
        for provider in cfg.providers.values():
            for key in provider.keys:
                models[provider.name].update(key.models or ())
        self._models: dict[str, frozenset[str]] = {p: frozenset(m) for p, m in models.items()}
        groups = {name: name for name in cfg.groups}
        groups[""] = ""  # a request refused before its model was resolved
        for prov, names in self._models.items():
            groups.update((f"{prov}/{m}", f"{prov}/{m}") for m in names)
            groups[f"{prov}/{OTHER}"] = f"{prov}/{OTHER}"
        self._groups = groups

    def model(self, provider: str, model: str) -> str:
        """``model`` if the config names it for ``provider`` (or it is empty), else
        ``other``."""
        if not model:
            return model
        known = self._models.get(provider)
        return model if known is not None and model in known else OTHER

    def group(self, name: str) -> str:
        """A configured group or a ``provider/model`` the config names, as is; another
        ``provider/model`` as ``provider/other``; anything else ``other``."""
        label = self._groups.get(name)
        if label is not None:
            return label
        provider, sep, _ = name.partition("/")
        return f"{provider}/{OTHER}" if sep and provider in self._models else OTHER
