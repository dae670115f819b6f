"""Plumbing: converters between FIRM's data and Flower's (config <-> run-config, adapters <-> ArrayRecord).

Flower's run-config is a flat mapping of dotted keys to scalars (`bool | int | float | str`);
FIRM's config is nested sections whose list fields (objective names, preference, ...) have no
Flower scalar type, so they travel as JSON text and are parsed back by the field's declared type.

Adapters travel as one `ArrayRecord` per payload, one `Array` per named tensor, in the adapter's
own dtype (float32 by default), so a payload decodes to exactly the tensors that were sent.
`payload_bytes` counts what goes over the wire for a record: the serialised bytes of the record
and of the objects in it, as Flower pushes them. For trained adapters these are a few hundred
bytes more than the in-process engine's safetensors payloads (a .npy header per tensor).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from firm.codec import Adapter
from firm.config import Config, ConfigError, config_from_dict, config_to_dict

RunConfig = dict[str, bool | int | float | str]

RESUME_FROM = "firm.resume_from"
"""Run-config key beside the config's: the run directory (on the SuperLink's host) that the ServerApp
continues from its latest checkpoint (`firm train --resume`); absent for a new run."""


def config_to_run_config(config: Config) -> RunConfig:
    """The config as Flower run-config entries: `section.key -> scalar`, list fields as JSON text."""
    flat: RunConfig = {}
    for section, values in config_to_dict(config).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def run_config_to_config(run_config: Mapping[str, Any]) -> Config:
    """Inverse of `config_to_run_config` (validated); raises ConfigError naming a bad key."""
    hints = typing.get_type_hints(Config)
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in run_config.items():
        if dotted == RESUME_FROM:  # an instruction to the ServerApp, not a config field
            continue
        section, _, key = dotted.partition(".")
        if section not in hints or not key:
            raise ConfigError(f"run-config: unknown key {dotted!r}")
        field_types = typing.get_type_hints(hints[section])
        if typing.get_origin(field_types.get(key)) is tuple and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ConfigError(f"run-config: {dotted}: expected a JSON list, got {value!r} ({err})") from None
        nested.setdefault(section, {})[key] = value
    return config_from_dict(nested)


def resume_dir(run_config: Mapping[str, Any]) -> Path | None:
    """The run directory a submitted run resumes (`RESUME_FROM`), or None for a new run."""
    value = run_config.get(RESUME_FROM)
    return Path(str(value)) if value else None


def adapter_to_record(adapter: Adapter) -> ArrayRecord:
    """One Array per tensor (moved to CPU, contiguous), in the adapter's key order and dtype."""
    return ArrayRecord({name: t.detach().to("cpu").contiguous() for name, t in adapter.items()})


def record_to_adapter(record: ArrayRecord) -> Adapter:
    """Inverse of `adapter_to_record`: CPU tensors with their original names, shapes and dtypes."""
    return {name: t.clone() for name, t in record.to_torch_state_dict().items()}


def payload_to_record(payload: bytes) -> ArrayRecord:
    """Opaque encoded bytes (a compressed upload, firm.compression) as a one-Array record of uint8."""
    return ArrayRecord({"payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)})


def record_to_payload(record: ArrayRecord) -> bytes:
    """Inverse of `payload_to_record`; KeyError if the record holds no `payload` Array."""
    return bytes(record["payload"].numpy().tobytes())


def payload_bytes(record: ArrayRecord | ConfigRecord) -> int:
    """Bytes of an adapter payload (or any record) in a message: the serialised record, its Arrays and their chunks.

    Flower sends a message as content-addressed objects (record -> Arrays -> data chunks), each
    distinct object once, so this counts each distinct object once: chunks with identical bytes
    (e.g. the zero-initialised LoRA B matrices of the first broadcast) travel, and count, once.
    """
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(record).values())


def put_json(records: RecordDict, name: str, value: Any) -> None:
    """Store plain JSON-able data (logs, weights, client state) under `name` as a one-entry ConfigRecord."""
    records[name] = ConfigRecord({"json": json.dumps(value)})


def get_json(records: RecordDict, name: str, default: Any = None) -> Any:
    """Inverse of `put_json`; `default` when the record is absent."""
    if name not in records:
        return default
    record = records[name]
    assert isinstance(record, ConfigRecord)
    return json.loads(str(record["json"]))
