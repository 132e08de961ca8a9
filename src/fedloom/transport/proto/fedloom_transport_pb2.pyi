from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("protocol_version", "client_name", "token", "compressions", "task_kinds")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    COMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    TASK_KINDS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    client_name: str
    token: str
    compressions: _containers.RepeatedScalarFieldContainer[str]
    task_kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol_version: _Optional[int] = ..., client_name: _Optional[str] = ..., token: _Optional[str] = ..., compressions: _Optional[_Iterable[str]] = ..., task_kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("session_id", "client_id", "run_id", "config_json", "heartbeat_seconds", "poll_seconds", "chunk_bytes", "compression", "protocol_version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POLL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_id: int
    run_id: str
    config_json: str
    heartbeat_seconds: float
    poll_seconds: float
    chunk_bytes: int
    compression: str
    protocol_version: int
    def __init__(self, session_id: _Optional[str] = ..., client_id: _Optional[int] = ..., run_id: _Optional[str] = ..., config_json: _Optional[str] = ..., heartbeat_seconds: _Optional[float] = ..., poll_seconds: _Optional[float] = ..., chunk_bytes: _Optional[int] = ..., compression: _Optional[str] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class ReadyRequest(_message.Message):
    __slots__ = ("session_id", "num_examples", "num_test_examples")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    num_examples: int
    num_test_examples: int
    def __init__(self, session_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., num_test_examples: _Optional[int] = ...) -> None: ...

class ReadyReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("run_active",)
    RUN_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    run_active: bool
    def __init__(self, run_active: _Optional[bool] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ParamSpecProto(_message.Message):
    __slots__ = ("names", "shapes", "dtypes")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    shapes: _containers.RepeatedCompositeFieldContainer[TensorShape]
    dtypes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ..., shapes: _Optional[_Iterable[_Union[TensorShape, _Mapping]]] = ..., dtypes: _Optional[_Iterable[str]] = ...) -> None: ...

class TensorShape(_message.Message):
    __slots__ = ("dims",)
    DIMS_FIELD_NUMBER: _ClassVar[int]
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dims: _Optional[_Iterable[int]] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("role", "digest", "num_bytes", "codec", "spec", "mask", "base")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    role: str
    digest: str
    num_bytes: int
    codec: str
    spec: ParamSpecProto
    mask: str
    base: str
    def __init__(self, role: _Optional[str] = ..., digest: _Optional[str] = ..., num_bytes: _Optional[int] = ..., codec: _Optional[str] = ..., spec: _Optional[_Union[ParamSpecProto, _Mapping]] = ..., mask: _Optional[str] = ..., base: _Optional[str] = ...) -> None: ...

class RowLayout(_message.Message):
    __slots__ = ("rows", "widths")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    WIDTHS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    widths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, rows: _Optional[int] = ..., widths: _Optional[_Iterable[int]] = ...) -> None: ...

class UploadSpec(_message.Message):
    __slots__ = ("codec", "size", "mask", "rows")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    codec: str
    size: int
    mask: str
    rows: RowLayout
    def __init__(self, codec: _Optional[str] = ..., size: _Optional[int] = ..., mask: _Optional[str] = ..., rows: _Optional[_Union[RowLayout, _Mapping]] = ...) -> None: ...

class TaskProto(_message.Message):
    __slots__ = ("task_id", "kind", "round", "client_id", "config_json", "params_digest", "params_bytes", "codec", "spec", "deadline_seconds", "blobs", "upload")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARAMS_BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: str
    round: int
    client_id: int
    config_json: str
    params_digest: str
    params_bytes: int
    codec: str
    spec: ParamSpecProto
    deadline_seconds: float
    blobs: _containers.RepeatedCompositeFieldContainer[BlobRef]
    upload: UploadSpec
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[str] = ..., round: _Optional[int] = ..., client_id: _Optional[int] = ..., config_json: _Optional[str] = ..., params_digest: _Optional[str] = ..., params_bytes: _Optional[int] = ..., codec: _Optional[str] = ..., spec: _Optional[_Union[ParamSpecProto, _Mapping]] = ..., deadline_seconds: _Optional[float] = ..., blobs: _Optional[_Iterable[_Union[BlobRef, _Mapping]]] = ..., upload: _Optional[_Union[UploadSpec, _Mapping]] = ...) -> None: ...

class PollReply(_message.Message):
    __slots__ = ("task", "idle", "finished")
    TASK_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    task: TaskProto
    idle: bool
    finished: bool
    def __init__(self, task: _Optional[_Union[TaskProto, _Mapping]] = ..., idle: _Optional[bool] = ..., finished: _Optional[bool] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("session_id", "params_digest", "offset")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    params_digest: str
    offset: int
    def __init__(self, session_id: _Optional[str] = ..., params_digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ParamsChunk(_message.Message):
    __slots__ = ("offset", "total_bytes", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    total_bytes: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("session_id", "task_id", "num_examples", "metrics", "error", "payload_bytes", "codec", "spec", "seconds", "touched_rows")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_ROWS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    error: str
    payload_bytes: int
    codec: str
    spec: ParamSpecProto
    seconds: float
    touched_rows: int
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., error: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., codec: _Optional[str] = ..., spec: _Optional[_Union[ParamSpecProto, _Mapping]] = ..., seconds: _Optional[float] = ..., touched_rows: _Optional[int] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
