"""The tier an account serves the calls that leave the tier to it, as the answers name it.

A request with no tier (OpenAI's ``service_tier`` unset or ``"auto"``) is served at the
account's default, which for an OpenAI project can be priority, about twice the standard
price. The guard holds such calls at the tier the last answer named. Until an answer has
named one, the first such call is held at standard and learns it; calls made beside it are
held at the dearest tier the account can default to, so a burst of concurrent first calls
from a priority project cannot pass the check at half of what each is billed.
"""

from __future__ import annotations

from kavach.spec import CallSpec
from kavach.usage import PriceVariant

CEILING: dict[str, PriceVariant] = {"openai": (("service_tier", "priority"),)}
"""The dearest tier an account can make its default, by provider. An OpenAI project's
default can be priority; no other provider prices an account tier above standard."""


class AccountTiers:
    """Each provider's account tier as last named, and which call is learning it meanwhile.

    >>> tiers = AccountTiers()
    >>> first = CallSpec(provider="openai", model="gpt-4o", prompt="a")
    >>> beside = CallSpec(provider="openai", model="gpt-4o", prompt="b")
    >>> tiers.to_hold(first), tiers.to_hold(beside)
    ((), (('service_tier', 'priority'),))
    >>> tiers.served(first, None)  # an answer that names no tier: standard
    ()
    """

    __slots__ = ("_known", "_learning")

    def __init__(self) -> None:
        self._known: dict[str, PriceVariant] = {}
        # provider -> id() of the spec of the call learning the tier (alive while it is)
        self._learning: dict[str, int] = {}

    def to_hold(self, spec: CallSpec) -> PriceVariant:
        """The tier to hold ``spec`` at, whose request leaves the tier to the account."""
        provider = spec.provider
        known = self._known.get(provider)
        if known is not None:
            return known
        ceiling = CEILING.get(provider)
        if ceiling is None:
            return ()
        if self._learning.setdefault(provider, id(spec)) == id(spec):  # atomic: one learns
            return ()
        return ceiling

    def known(self, provider: str) -> PriceVariant:
        """The account's tier as last named, else standard."""
        return self._known.get(provider, ())

    def held_above(self, spec: CallSpec, variant: PriceVariant) -> bool:
        """Whether a call held at ``variant`` is held at the ceiling only because no answer
        had named the account's tier (so it may be held again at the tier known now)."""
        ceiling = CEILING.get(spec.provider)
        return (
            spec.price_variant is None
            and variant == ceiling
            and self._known.get(spec.provider) != ceiling
        )

    def served(self, spec: CallSpec, tier: PriceVariant | None) -> PriceVariant:
        """The tier the answer to ``spec`` was served at, learned as the account's: the
        ``tier`` it names, or, when it names none, the account's as last named, else
        standard."""
        provider = spec.provider
        if tier is None:
            tier = self._known.get(provider)
            if tier is None:
                tier = self._known[provider] = ()
        else:
            self._known[provider] = tier
        return tier

    def unanswered(self, spec: CallSpec) -> None:
        """``spec`` ended with no answer (refused, failed): if it was learning the tier, the
        next such call learns it."""
        provider = spec.provider
        if self._learning.get(provider) == id(spec) and provider not in self._known:
            self._learning.pop(provider, None)
