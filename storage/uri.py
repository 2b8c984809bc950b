"""One entry point from a location string to an fsspec filesystem and a path inside it.

Accepted locations: a local path, ``file://...``, ``s3://bucket/key`` (s3fs, endpoint and
credentials from :class:`StorageSettings`) and ``memory://...``."""

from __future__ import annotations

import os
from functools import lru_cache

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SUPPORTED_PROTOCOLS = ("file", "s3", "memory")


class StorageSettings(BaseSettings):
    """S3 connection settings, from ``EVOL_STORAGE__ENDPOINT_URL``, ``__KEY``, ``__SECRET``, ``__REGION``."""

    model_config = SettingsConfigDict(env_prefix="EVOL_STORAGE__", frozen=True, extra="ignore")

    endpoint_url: str | None = None
    key: str | None = None
    secret: SecretStr | None = None
    region: str | None = None


def protocol_of(uri: str) -> str:
    if "://" not in uri:
        return "file"
    proto = uri.split("://", 1)[0].lower()
    if proto not in SUPPORTED_PROTOCOLS:
        raise ValueError(f"unsupported storage location {uri!r}: use a local path, file://, s3:// or memory://")
    return proto


def join_uri(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


@lru_cache(maxsize=16)
def _s3_filesystem(settings: StorageSettings) -> fsspec.AbstractFileSystem:
    import s3fs

    if settings.region:
        # s3fs breaks against some S3-compatible servers when region is passed as client kwarg.
        os.environ.setdefault("AWS_DEFAULT_REGION", settings.region)
    return s3fs.S3FileSystem(key=settings.key, secret=settings.secret.get_secret_value() if settings.secret else None,
                             endpoint_url=settings.endpoint_url, anon=False, skip_instance_cache=True,
                             use_listings_cache=False)


def filesystem_for(uri: str, settings: StorageSettings | None = None) -> fsspec.AbstractFileSystem:
    proto = protocol_of(uri)
    if proto == "s3":
        return _s3_filesystem(settings or StorageSettings())
    if proto == "memory":
        return fsspec.filesystem("memory")
    return LocalFileSystem(auto_mkdir=True)


def strip_protocol(uri: str) -> str:
    """The path part of a location, as its filesystem wants it."""
    proto = protocol_of(uri)
    if proto == "file":
        return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    if proto == "memory":
        return "/" + uri[len("memory://"):].lstrip("/")
    return uri[len("s3://"):]


def resolve(uri: str, settings: StorageSettings | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    return filesystem_for(uri, settings), strip_protocol(uri)


def to_uri(uri_like: str) -> str:
    """Canonical form: local paths become absolute, other locations are kept."""
    return strip_protocol(uri_like) if protocol_of(uri_like) == "file" else uri_like.rstrip("/")
