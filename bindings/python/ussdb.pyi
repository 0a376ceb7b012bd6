import asyncio
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Optional, TypedDict, Union, final

from typing_extensions import Self

__all__ = ["Error", "FmeStorage", "Store", "UserStorage", "__version__"]

__version__: str

_Durability = Literal["periodic", "immediate", "never"]
_PathLike = Union[str, os.PathLike[str]]

class Error(Exception):
    """Raised when the ussdb engine reports an error; str(e) is the engine's message."""

class _RecordBase(TypedDict):
    userId: str
    campaignKey: str
    variationName: str

class _Record(_RecordBase, total=False):
    """What Store.get returns: the engine's shape (goals under the singular key)."""

    goalIdentifier: str

class _VwoRecord(_RecordBase, total=False):
    """What UserStorage.get returns and the VWO Python SDK passes to set (goals, plural)."""

    goalIdentifiers: str

class _RecordIn(_RecordBase, total=False):
    goalIdentifier: Optional[str]
    goalIdentifiers: Optional[str]

class _FmeRecordBase(TypedDict):
    featureKey: str
    userId: str

class _FmeRecord(_FmeRecordBase, total=False):
    """What FmeStorage.get returns and the VWO FME SDK passes to set: absent members stay absent,
    None stays None, ids come back as the int (or float) they went in as; members the SDK adds in
    later versions are kept too (so the dict may hold more keys than these)."""

    featureId: Optional[int]
    rolloutId: Optional[int]
    rolloutKey: Optional[str]
    rolloutVariationId: Optional[int]
    experimentId: Optional[int]
    experimentKey: Optional[str]
    experimentVariationId: Optional[int]
    isInHoldoutId: Optional[list[int]]
    notInHoldoutId: Optional[list[int]]

@final
class Store:
    def __new__(
        cls,
        path: _PathLike,
        durability: _Durability = "periodic",
        segment_size: Optional[int] = None,
        *,
        compaction_threshold: Optional[float] = None,
        auto_compaction: bool = True,
        shared: bool = True,
    ) -> Self: ...
    def get(self, user_id: str, campaign_key: str) -> Optional[_Record]: ...
    def set(self, data: _RecordIn) -> None: ...
    def set_async(self, data: _RecordIn) -> asyncio.Future[None]: ...
    def delete(self, user_id: str, campaign_key: str) -> bool: ...
    def forget_user(self, user_id: str) -> int: ...
    def campaigns_of(self, user_id: str) -> list[_Record]: ...
    def get_feature(self, feature_key: str, user_id: str) -> Optional[dict[str, Any]]: ...
    def set_feature(self, data: dict[str, Any]) -> None: ...
    def delete_feature(self, feature_key: str, user_id: str) -> bool: ...
    def features_of(self, user_id: str) -> list[dict[str, Any]]: ...
    def count_features(self) -> int: ...
    def sync(self) -> None: ...
    def compact(self) -> None: ...
    def stats(self) -> dict[str, Union[int, float, None]]: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def path(self) -> Path: ...
    def __enter__(self) -> "Store": ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

@final
class UserStorage:
    def __new__(
        cls,
        path_or_store: Union[_PathLike, Store],
        durability: _Durability = "periodic",
        segment_size: Optional[int] = None,
        *,
        redis_url: Optional[str] = None,
        redis_cluster: Optional[list[str]] = None,
        fresh_for: Optional[float] = None,
        redis_key_prefix: Optional[str] = None,
        per_worker: bool = False,
        ship_batch: Optional[int] = None,
        retry_max: Optional[float] = None,
    ) -> Self: ...
    def get(self, user_id: str, campaign_key: str) -> Optional[_VwoRecord]: ...
    def set(self, data: _RecordIn) -> None: ...
    def flush(self, timeout: float = 10.0) -> None: ...
    def tier_stats(self) -> Optional[dict[str, Any]]: ...
    @property
    def store(self) -> Store: ...
    def close(self) -> None: ...
    def __enter__(self) -> "UserStorage": ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

@final
class FmeStorage:
    def __new__(
        cls,
        path_or_store: Union[_PathLike, Store],
        durability: _Durability = "periodic",
        segment_size: Optional[int] = None,
    ) -> Self: ...
    def get(self, feature_key: str, user_id: str) -> Optional[_FmeRecord]: ...
    def set(self, data: _FmeRecord) -> None: ...
    @property
    def store(self) -> Store: ...
    def close(self) -> None: ...
    def __enter__(self) -> "FmeStorage": ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...
