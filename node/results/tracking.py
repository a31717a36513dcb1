"""TID 4108 Tracking Identifier: how an SR measurement group and a SEG segment name one finding."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd


@dataclass(frozen=True)
class Tracking:
    """A readable identifier (LO, cut to 64 characters by whoever makes it) and a UID.

    A finding's SR groups and its SEG segment carry the same pair, which is how a reader pairs them.
    """

    identifier: str
    uid: str

    def content(self) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(uid=self.uid, identifier=self.identifier)
