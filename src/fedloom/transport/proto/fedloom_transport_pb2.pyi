from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("client_name", "compressions", "protocol_version", "task_kinds", "token")
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
    def __init__(self, protocol_version: int | None = ..., client_name: str | None = ..., token: str | None = ..., compressions: _Iterable[str] | None = ..., task_kinds: _Iterable[str] | None = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("chunk_bytes", "client_id", "compression", "config_json", "heartbeat_seconds", "poll_seconds", "protocol_version", "run_id", "session_id")
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
    def __init__(self, session_id: str | None = ..., client_id: int | None = ..., run_id: str | None = ..., config_json: str | None = ..., heartbeat_seconds: float | None = ..., poll_seconds: float | None = ..., chunk_bytes: int | None = ..., compression: str | None = ..., protocol_version: int | None = ...) -> None: ...

class ReadyRequest(_message.Message):
    __slots__ = ("num_examples", "num_test_examples", "session_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    num_examples: int
    num_test_examples: int
    def __init__(self, session_id: str | None = ..., num_examples: int | None = ..., num_test_examples: int | None = ...) -> None: ...

class ReadyReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: str | None = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("run_active",)
    RUN_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    run_active: bool
    def __init__(self, run_active: bool | None = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: str | None = ...) -> None: ...

class ParamSpecProto(_message.Message):
    __slots__ = ("dtypes", "names", "shapes")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    shapes: _containers.RepeatedCompositeFieldContainer[TensorShape]
    dtypes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Iterable[str] | None = ..., shapes: _Iterable[TensorShape | _Mapping] | None = ..., dtypes: _Iterable[str] | None = ...) -> None: ...

class TensorShape(_message.Message):
    __slots__ = ("dims",)
    DIMS_FIELD_NUMBER: _ClassVar[int]
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dims: _Iterable[int] | None = ...) -> None: ...

class TaskProto(_message.Message):
    __slots__ = ("client_id", "codec", "config_json", "deadline_seconds", "kind", "params_bytes", "params_digest", "round", "spec", "task_id")
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
    def __init__(self, task_id: str | None = ..., kind: str | None = ..., round: int | None = ..., client_id: int | None = ..., config_json: str | None = ..., params_digest: str | None = ..., params_bytes: int | None = ..., codec: str | None = ..., spec: ParamSpecProto | _Mapping | None = ..., deadline_seconds: float | None = ...) -> None: ...

class PollReply(_message.Message):
    __slots__ = ("finished", "idle", "task")
    TASK_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    task: TaskProto
    idle: bool
    finished: bool
    def __init__(self, task: TaskProto | _Mapping | None = ..., idle: bool | None = ..., finished: bool | None = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("offset", "params_digest", "session_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    params_digest: str
    offset: int
    def __init__(self, session_id: str | None = ..., params_digest: str | None = ..., offset: int | None = ...) -> None: ...

class ParamsChunk(_message.Message):
    __slots__ = ("data", "offset", "total_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    total_bytes: int
    data: bytes
    def __init__(self, offset: int | None = ..., total_bytes: int | None = ..., data: bytes | None = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("codec", "error", "metrics", "num_examples", "payload_bytes", "seconds", "session_id", "spec", "task_id")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: str | None = ..., value: float | None = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    error: str
    payload_bytes: int
    codec: str
    spec: ParamSpecProto
    seconds: float
    def __init__(self, session_id: str | None = ..., task_id: str | None = ..., num_examples: int | None = ..., metrics: _Mapping[str, float] | None = ..., error: str | None = ..., payload_bytes: int | None = ..., codec: str | None = ..., spec: ParamSpecProto | _Mapping | None = ..., seconds: float | None = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("data", "header")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: UploadHeader | _Mapping | None = ..., data: bytes | None = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: bool | None = ..., reason: str | None = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: str | None = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
