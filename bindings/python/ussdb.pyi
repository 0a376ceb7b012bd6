import os
from pathlib import Path
from types import TracebackType
from typing import Literal, Optional, TypedDict, Union, final

from typing_extensions import Self

__all__ = ["Error", "Store", "UserStorage", "__version__"]

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
    ) -> Self: ...
    def get(self, user_id: str, campaign_key: str) -> Optional[_Record]: ...
    def set(self, data: _RecordIn) -> None: ...
    def delete(self, user_id: str, campaign_key: str) -> bool: ...
    def forget_user(self, user_id: str) -> int: ...
    def campaigns_of(self, user_id: str) -> list[_Record]: ...
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
    ) -> Self: ...
    def get(self, user_id: str, campaign_key: str) -> Optional[_VwoRecord]: ...
    def set(self, data: _RecordIn) -> None: ...
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
