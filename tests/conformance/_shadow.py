"""One shadow (classic or named) seen through AWS's ``IotShadowClientV2``, unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from awsiot import iotshadow

from tests.conformance._sdk import EventStream, open_stream, rr_options


@dataclass
class SdkShadow:
    """Calls the classic or the named variant of each V2 operation."""

    client: iotshadow.IotShadowClientV2
    thing: str
    shadow: str | None = None

    @classmethod
    def over(cls, conn: Any, thing: str, shadow: str | None = None) -> SdkShadow:
        return cls(iotshadow.IotShadowClientV2(conn, rr_options()), thing, shadow)

    @property
    def missing_name(self) -> str:
        """The name IoT Core puts in the 404 text: thing (classic) or shadow (named)."""
        return self.thing if self.shadow is None else self.shadow

    def get(self) -> Any:
        if self.shadow is None:
            return self.client.get_shadow(iotshadow.GetShadowRequest(thing_name=self.thing))
        return self.client.get_named_shadow(
            iotshadow.GetNamedShadowRequest(thing_name=self.thing, shadow_name=self.shadow)
        )

    def delete(self) -> Any:
        if self.shadow is None:
            return self.client.delete_shadow(iotshadow.DeleteShadowRequest(thing_name=self.thing))
        return self.client.delete_named_shadow(
            iotshadow.DeleteNamedShadowRequest(thing_name=self.thing, shadow_name=self.shadow)
        )

    def update_request(self, state: Any, version: int | None = None) -> Any:
        if self.shadow is None:
            return iotshadow.UpdateShadowRequest(
                thing_name=self.thing, state=state, version=version
            )
        return iotshadow.UpdateNamedShadowRequest(
            thing_name=self.thing, shadow_name=self.shadow, state=state, version=version
        )

    def send(self, request: Any) -> Any:
        if self.shadow is None:
            return self.client.update_shadow(request)
        return self.client.update_named_shadow(request)

    def update(
        self,
        *,
        desired: Any = None,
        reported: Any = None,
        version: int | None = None,
        desired_null: bool = False,
        reported_null: bool = False,
    ) -> Any:
        state = iotshadow.ShadowState(
            desired=desired,
            reported=reported,
            desired_is_nullable=desired_null,
            reported_is_nullable=reported_null,
        )
        return self.send(self.update_request(state, version))

    async def delta_stream(self) -> EventStream:
        if self.shadow is None:
            req: Any = iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=self.thing)
            create = self.client.create_shadow_delta_updated_stream
        else:
            req = iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest(
                thing_name=self.thing, shadow_name=self.shadow
            )
            create = self.client.create_named_shadow_delta_updated_stream
        return await open_stream(lambda opts: create(req, opts), iotshadow.ShadowDeltaUpdatedEvent)

    async def documents_stream(self) -> EventStream:
        if self.shadow is None:
            req: Any = iotshadow.ShadowUpdatedSubscriptionRequest(thing_name=self.thing)
            create = self.client.create_shadow_updated_stream
        else:
            req = iotshadow.NamedShadowUpdatedSubscriptionRequest(
                thing_name=self.thing, shadow_name=self.shadow
            )
            create = self.client.create_named_shadow_updated_stream
        return await open_stream(lambda opts: create(req, opts), iotshadow.ShadowUpdatedEvent)


def shadow_prefix(thing: str, shadow: str | None = None) -> str:
    """``$aws/things/T/shadow`` or ``$aws/things/T/shadow/name/N``."""
    base = f"$aws/things/{thing}/shadow"
    return base if shadow is None else f"{base}/name/{shadow}"
