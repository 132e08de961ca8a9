"""Run configuration: a YAML file plus ``--set key=value`` overrides, validated with pydantic.

Unknown keys are errors (a typo must never be silently ignored), and every error names the field,
the value given and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedloom.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(_Section):
    name: Literal[
        "digits", "breast_cancer", "diabetes", "fashion_mnist", "mnist", "csv",
            "pima", "credit_default", "credit_data", "shakespeare", "movielens",
    ] = "digits"  # fmt: skip
    test_fraction: float = Field(0.2, gt=0, lt=1)
    data_dir: str | None = None
    path: str | None = Field(None, description="CSV file, for name=csv")
    target: str = "target"
    group_column: str | None = None
    seq_len: int = Field(80, ge=1, description="shakespeare: characters per input sequence")
    stride: int = Field(1, ge=1, description="shakespeare: keep every stride-th target character")
    max_clients: int | None = Field(
        None,
        ge=1,
        description="shakespeare, movielens: a seeded sample of this many (play, role) or user "
        "clients",
    )


class PartitionConfig(_Section):
    kind: Literal["iid", "dirichlet", "shards", "quantity", "natural"] = "iid"
    num_clients: int = Field(100, ge=1)
    alpha: float = Field(0.5, gt=0)
    shards_per_client: int = Field(2, ge=1)
    quantity_distribution: Literal["lognormal", "power_law"] = "lognormal"
    quantity_sigma: float = Field(1.0, gt=0)


class ModelConfig(_Section):
    name: Literal["auto", "mlp", "cnn", "linear", "logistic", "char_lstm", "mf"] = Field(
        "auto",
        description="auto: the dataset's reference model (char_lstm for shakespeare, mf for "
        "movielens, cnn for the image sets, mlp for digits and the tables)",
    )
    hidden: list[int] = Field(default_factory=lambda: [64])
    rank: int = Field(16, ge=1, description="mf: factors per user and per item")

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("every hidden width must be >= 1")
        return v


class StrategyConfig(_Section):
    # ``lambda`` (Ditto) is a Python keyword: the field is ditto_lambda, its key either name
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True)

    name: Literal[
        "fedavg",
        "fedsgd",
        "fedprox",
        "scaffold",
        "fednova",
        "qffl",
        "fedbuff",
        "ifca",
        "fedper",
        "ditto",
    ] = "fedavg"
    fraction_fit: float = Field(1.0, gt=0, le=1)
    min_fit_clients: int = Field(1, ge=1)
    fraction_evaluate: float = Field(1.0, gt=0, le=1)
    server_lr: float = Field(1.0, gt=0)
    server_momentum: float = Field(0.0, ge=0, lt=1)
    server_optimizer: Literal["sgd", "adam", "yogi", "adagrad"] = Field(
        "sgd",
        description="sgd (FedAvg, FedAvgM with server_momentum) or the adaptive FedAdam, "
        "FedYogi, FedAdagrad (Reddi et al. 2021)",
    )
    beta1: float | None = Field(
        None, ge=0, lt=1, description="adam, yogi, adagrad: first-moment decay (null: 0.9)"
    )
    beta2: float | None = Field(
        None, ge=0, lt=1, description="adam, yogi: second-moment decay (null: 0.99)"
    )
    tau: float | None = Field(
        None, gt=0, description="adam, yogi, adagrad: adaptivity, added to sqrt(v) (null: 1e-3)"
    )
    aggregation: Literal["mean", "sum"] = "mean"
    proximal_mu: float = Field(0.01, ge=0, description="fedprox: weight of the proximal term")
    q: float = Field(
        1.0, ge=0, description="qffl: fairness exponent; 0 is FedAvg's objective, larger is fairer"
    )
    buffer_size: int = Field(
        10, ge=1, description="fedbuff: K, client updates buffered before each server step"
    )
    concurrency: int = Field(
        20, ge=1, description="fedbuff: C, clients training at once (at most the clients online)"
    )
    clusters: int = Field(2, ge=1, description="ifca: k, the number of cluster models")
    personal_layers: list[str] = Field(
        default_factory=list,
        description="fedper: parameters or modules (e.g. net.2) that stay on each client",
    )
    ditto_lambda: float = Field(
        0.1,
        ge=0,
        alias="lambda",
        description="ditto: pull of each personal model towards the global one (key: lambda)",
    )
    qffl_lipschitz: float | None = Field(
        None,
        gt=0,
        description="qffl: L, the Lipschitz estimate in q-FedAvg's step (null: 1 / client.lr)",
    )
    sampling: Literal["fixed", "poisson", "size"] = Field(
        "fixed",
        description="fixed: ceil(fraction_fit * N) clients without replacement; poisson: each "
        "client independently with probability fraction_fit (what DP amplification assumes); "
        "size (qffl): ceil(fraction_fit * N) clients drawn in proportion to their training-set "
        "sizes",
    )
    max_update_norm: float | None = Field(
        None, gt=0, description="bound on each client update's L2 norm (null: unbounded)"
    )
    max_update_norm_action: Literal["clip", "reject"] = Field(
        "clip", description="an update over max_update_norm is scaled down to it, or refused"
    )
    aggregator: Literal[
        "mean", "median", "trimmed_mean", "krum", "multikrum", "norm_bound", "centered_clip"
    ] = Field("mean", description="how a round's updates are combined (robust rules buffer them)")
    trimmed_mean_beta: float = Field(
        0.1, ge=0, lt=0.5, description="trimmed_mean: fraction cut from each end per coordinate"
    )
    krum_f: int = Field(1, ge=0, description="krum, multikrum: malicious clients tolerated")
    multikrum_m: int | None = Field(
        None, ge=1, description="multikrum: updates averaged (null: clients - krum_f)"
    )
    norm_bound: float = Field(1.0, gt=0, description="norm_bound: L2 bound on each update")
    centered_clip_tau: float = Field(1.0, gt=0, description="centered_clip: clipping radius")
    centered_clip_iters: int = Field(3, ge=1, description="centered_clip: iterations")


class ClientConfig(_Section):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(10, ge=1)
    lr: float = Field(0.2, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class ClientsConfig(_Section):
    """Realistic client behaviour in simulation, on a virtual clock (README, "Client behaviour
    and asynchronous FL"). Off by default; ``fedloom server`` ignores it (real clients have real
    speeds)."""

    enabled: bool = Field(False, description="simulate client speeds, bandwidth and time")
    speed: float = Field(
        100.0, gt=0, description="median training speed, examples per second (one pass of one)"
    )
    speed_sigma: float = Field(
        0.0, ge=0, description="lognormal sigma of speed across clients (0: all equal)"
    )
    bandwidth_mbps: float = Field(
        10.0, gt=0, description="median network bandwidth, megabits per second, each direction"
    )
    bandwidth_sigma: float = Field(
        0.0, ge=0, description="lognormal sigma of bandwidth across clients (0: all equal)"
    )
    trace: str | None = Field(
        None,
        description="CSV or JSON file of client_id with speed and/or bandwidth_mbps (and, in "
        "JSON, online intervals); its values replace the drawn ones",
    )
    mean_online_s: float | None = Field(
        None, gt=0, description="availability: mean seconds a client stays online (null: always)"
    )
    mean_offline_s: float = Field(
        600.0, gt=0, description="availability: mean seconds a client stays away"
    )
    deadline_s: float | None = Field(
        None, gt=0, description="synchronous rounds keep only clients done within this many seconds"
    )
    local_seconds: float | None = Field(
        None,
        gt=0,
        description="variable local work: each client trains the whole epochs that fit in this "
        "time at its speed (at least 1, at most client.epochs); null: client.epochs for all",
    )


class EngineConfig(_Section):
    name: Literal["sequential", "vectorized", "ray"] = "vectorized"
    threads: int | None = Field(None, ge=1, description="torch threads; default: torch's choice")
    max_memory_mb: float = Field(
        1024.0, gt=0, description="vectorized: memory budget per chunk of clients trained together"
    )
    max_params: int | None = Field(
        1_000_000,
        ge=1,
        description="vectorized: models with more parameters train client by client "
        "(null: always vectorise)",
    )
    address: str | None = Field(
        None,
        description="ray: cluster address (e.g. 'auto' or 'HOST:6379'); None starts a local one",
    )
    num_workers: int | None = Field(
        None, ge=1, description="ray: client workers (actors); default: the CPUs Ray sees"
    )


class EvalConfig(_Section):
    every: int = Field(1, ge=1)
    federated: bool = False
    client_test_fraction: float = Field(0.2, gt=0, lt=1)
    finetune_epochs: int = Field(
        0, ge=0, description="federated evaluation: local epochs each client trains first"
    )


class TransportConfig(_Section):
    codec: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="the downlink's codec, and the upload's when `upload` is empty"
    )
    upload: list[str | dict[str, float | int]] = Field(
        default_factory=list,
        description="the upload's codec chain, applied in order: [topk: 0.01, int8, zstd]",
    )
    error_feedback: bool = Field(
        False, description="add what a lossy upload left out to the next round's update"
    )
    download: list[str | dict[str, float | int]] = Field(
        default_factory=list,
        description="the downlink's codec chain (the model and other blobs): [int8]; [] = codec",
    )

    download_delta: bool = Field(
        False,
        description="send each client the model as a delta against the one it holds (its last)",
    )
    download_delta_bases: int = Field(
        8,
        ge=1,
        description="download_delta: the distinct client-held models the server keeps (each a "
        "model copy); a client holding an older one gets the whole model",
    )

    @field_validator("upload")
    @classmethod
    def _chain(cls, v: list[str | dict[str, float | int]]) -> list[str | dict[str, float | int]]:
        from fedloom.codecs import codec_spec, parse_codec

        _not_a_mask(parse_codec(codec_spec(v)), "transport.upload")  # or what is wrong with it
        return v

    @field_validator("download")
    @classmethod
    def _download_chain(
        cls, v: list[str | dict[str, float | int]]
    ) -> list[str | dict[str, float | int]]:
        from fedloom.codecs import codec_spec, parse_codec

        codec = parse_codec(codec_spec(v))
        _not_a_mask(codec, "transport.download")
        if codec.stochastic:
            raise ValueError(
                f"the downlink is encoded once a round for every client, with no random stream: "
                f"{codec.name!r} is stochastic; use a deterministic codec (float16, int8, topk, "
                "sign) for transport.download"
            )
        return v

    @model_validator(mode="after")
    def _feedback_needs_a_lossy_upload(self) -> TransportConfig:
        lossless = self.upload_codec == "float32" or self.upload_codec.startswith("zstd")
        if self.error_feedback and lossless:
            raise ValueError(
                "transport.error_feedback adds back what a lossy upload left out, and a float32 "
                "upload leaves out nothing: set transport.upload (e.g. [topk: 0.01, int8]) or "
                "turn error_feedback off"
            )
        return self

    @property
    def download_codec(self) -> str:
        """The canonical spec of the downlink's codec chain."""
        from fedloom.codecs import codec_spec

        return codec_spec(self.download) if self.download else self.codec

    @property
    def upload_codec(self) -> str:
        """The canonical spec of the upload's codec chain."""
        from fedloom.codecs import codec_spec

        return codec_spec(self.upload) if self.upload else self.codec


def _not_a_mask(codec: Any, key: str) -> None:
    if "bitmask" in codec.name.split("|"):
        raise ValueError(
            f"bitmask encodes pruning masks (0/1 vectors) only, not the values of {key}; "
            "use pruning.enabled for a sparse model"
        )


class ServerConfig(_Section):
    """The deployment server (``fedloom server``); ignored by simulations."""

    min_clients: int = Field(
        1, ge=1, description="connected clients required before a round starts"
    )
    join_timeout_s: float = Field(
        600.0, gt=0, description="fail the run if min_clients have not connected by then"
    )
    round_deadline_s: float = Field(
        300.0, gt=0, description="results not back by then count as dropped"
    )
    round_retries: int = Field(
        2, ge=0, description="retries of a round with fewer than min_fit_clients results"
    )
    over_selection: float = Field(
        0.0, ge=0, description="ask this fraction more clients; take the first that return"
    )
    heartbeat_s: float = Field(5.0, gt=0, description="client heartbeat interval")
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="drop a client silent for this long; its task fails at once"
    )
    poll_s: float = Field(10.0, gt=0, description="how long one task long-poll is held")
    chunk_kb: int = Field(1024, ge=1, description="params/update chunk size")
    max_message_mb: float = Field(
        4.0, gt=0, description="cap on any single gRPC message, either direction"
    )
    compression: Literal["none", "gzip"] = "none"
    auth: Literal["mtls", "token"] = Field(
        "mtls", description="client authentication: mTLS certificates or HMAC enrolment tokens"
    )
    max_workers: int = Field(
        256, ge=4, description="server threads; each connected client holds one while polling"
    )
    max_concurrent_rpcs: int | None = Field(
        None, ge=4, description="calls held at once, beyond: RESOURCE_EXHAUSTED (null: 2 x workers)"
    )
    first_message_s: float = Field(
        10.0, gt=0, description="an upload stream that sends nothing this long is closed"
    )
    idle_stream_s: float = Field(
        30.0, gt=0, description="an upload stream silent this long between messages is closed"
    )
    central_eval: bool = Field(True, description="evaluate on the server's held-out split")
    allowed_clients: list[str] | None = Field(
        None, description="client names allowed to join this run (null: any authenticated one)"
    )
    max_client_examples: int | None = Field(
        None,
        ge=1,
        description="cap on the training examples a client may declare (its aggregation weight)",
    )
    keep_checkpoints: int = Field(2, ge=1)


class PruningConfig(_Section):
    """Gradual magnitude pruning of the global model (Zhu and Gupta 2017)."""

    enabled: bool = False
    target_sparsity: float = Field(
        0.9, gt=0, lt=1, description="fraction of the prunable weights pruned at end_round"
    )
    start_round: int = Field(2, ge=1, description="the first pruning step (at sparsity 0)")
    end_round: int = Field(15, ge=1, description="the round the target sparsity is reached")
    every: int = Field(1, ge=1, description="rounds between pruning steps")

    @model_validator(mode="after")
    def _ordered(self) -> PruningConfig:
        if self.end_round < self.start_round:
            raise ValueError(
                f"pruning.end_round ({self.end_round}) must be >= pruning.start_round "
                f"({self.start_round})"
            )
        return self


class TrackingConfig(_Section):
    """Where round records go besides the results folder's own files."""

    tensorboard: bool = Field(
        False,
        description="write TensorBoard event files into the results folder: scalars per round, "
        "histograms of per-client metrics",
    )
    wandb: bool = Field(
        False,
        description="log each round to Weights & Biases in offline mode, into the results folder "
        "(needs the wandb package; upload later with `wandb sync`)",
    )
    mlflow: bool = Field(
        False,
        description="log each round to MLflow, in a local file store in the results folder "
        "(needs the mlflow-skinny package)",
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI instead of <results folder>/mlruns"
    )
    project: str = Field(
        "fedloom", min_length=1, description="W&B project and MLflow experiment name"
    )


class DPSGDConfig(_Section):
    """Record-level DP-SGD inside every client's local training (Abadi et al. 2016)."""

    enabled: bool = False
    max_grad_norm: float = Field(1.0, gt=0, description="per-example clip norm")
    noise_multiplier: float = Field(1.0, ge=0, description="noise std over max_grad_norm")


class PrivacyConfig(_Section):
    """Differential privacy of the clients' updates (README, "Differential privacy")."""

    mechanism: Literal["none", "central", "client", "local"] = "none"
    clipping: Literal["fixed", "adaptive"] = "fixed"
    clip_norm: float = Field(1.0, gt=0, description="C, or the initial C for adaptive clipping")
    target_quantile: float = Field(0.5, gt=0, lt=1, description="adaptive: the quantile C tracks")
    clip_lr: float = Field(0.2, gt=0, description="adaptive: eta of C * exp(-eta * (b - gamma))")
    clipped_count_stddev: float | None = Field(
        None, gt=0, description="adaptive: noise std of the unclipped count; null: m / 20"
    )
    noise_multiplier: float = Field(1.0, ge=0, description="z: noise std is z * C")
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "pld"] = "rdp"
    max_epsilon: float | None = Field(None, gt=0, description="stop before exceeding this")
    noise_seed: int | None = Field(
        None,
        description="null: server noise from the OS CSPRNG; an int: a reproducible stream "
        "(experiments only: whoever knows it can remove the noise)",
    )
    dp_sgd: DPSGDConfig = Field(default_factory=DPSGDConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PrivacyConfig:
        if self.max_epsilon is not None and self.noise_multiplier == 0:
            raise ValueError(
                "privacy.noise_multiplier=0 adds no noise, so epsilon is infinite and "
                f"privacy.max_epsilon={self.max_epsilon:g} cannot be met; set a noise multiplier "
                "(fedloom privacy calibrates one) or drop max_epsilon"
            )
        if self.clipping == "adaptive" and self.mechanism in ("client", "local"):
            raise ValueError(
                f"privacy.clipping=adaptive needs the server to see each update's norm; with "
                f"privacy.mechanism={self.mechanism} clients clip, so use clipping=fixed"
            )
        return self


class SecureAggregationConfig(_Section):
    """Secure aggregation (README, "Secure aggregation"): the server sees only the sum."""

    enabled: bool = False
    mode: Literal["secagg_plus", "secagg"] = Field(
        "secagg_plus", description="secagg_plus: a sparse random neighbour graph; secagg: all pairs"
    )
    neighbours: int | None = Field(
        None, ge=1, description="k; null: 3 log2(cohort) rounded up to even (secagg_plus only)"
    )
    threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="fraction of a client's neighbours (and itself) needed to unmask",
    )
    clip_range: float = Field(
        8.0, description="values are clipped to [-clip_range, clip_range] before quantising"
    )
    quantization_bits: int = Field(22, ge=1, le=62)
    modulus_bits: int = Field(32, ge=2, le=64)

    @model_validator(mode="after")
    def _valid(self) -> SecureAggregationConfig:
        if not self.clip_range > 0:
            raise ValueError(
                f"secure_aggregation.clip_range must be > 0 (values are clipped to "
                f"[-clip_range, clip_range]), got {self.clip_range}"
            )
        if self.quantization_bits >= self.modulus_bits:
            raise ValueError(
                f"secure_aggregation.quantization_bits ({self.quantization_bits}) must be below "
                f"modulus_bits ({self.modulus_bits}): the sum of the cohort needs the headroom"
            )
        if self.neighbours is not None and self.mode == "secagg":
            raise ValueError(
                "secure_aggregation.neighbours applies to mode secagg_plus; secagg uses every pair"
            )
        return self


class AttackConfig(_Section):
    """Simulated malicious clients (``fedloom run`` only), to measure defences."""

    kind: Literal["label_flip", "sign_flip", "scale", "gaussian", "backdoor"]
    fraction: float = Field(0.1, ge=0, lt=1, description="share of clients that are malicious")
    scale: float = Field(
        10.0,
        gt=0,
        description="sign_flip/scale/backdoor: update boost; gaussian: the noise's std",
    )


class Config(_Section):
    seed: int = 0
    rounds: int = Field(20, ge=1)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    pruning: PruningConfig = Field(default_factory=PruningConfig)

    @model_validator(mode="after")
    def _pruning_in_the_run(self) -> Config:
        if self.pruning.enabled and self.pruning.start_round > self.rounds:
            raise ValueError(
                f"pruning.start_round ({self.pruning.start_round}) is after the last round "
                f"({self.rounds}): the model would never be pruned"
            )
        return self

    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @model_validator(mode="after")
    def _matrix_factorisation_is_for_ratings(self) -> Config:
        if self.model.name != "auto" and (self.dataset.name == "movielens") != (
            self.model.name == "mf"
        ):
            raise ValueError(
                "dataset.name=movielens trains a matrix factorisation and model.name=mf needs "
                f"ratings: use them together (got dataset.name={self.dataset.name!r}, "
                f"model.name={self.model.name!r})"
            )
        return self

    @model_validator(mode="after")
    def _ratings_defaults(self) -> Config:
        # A setting left at its default follows the dataset, as model.name: auto does: movielens
        # has one client per user, is evaluated on the clients (the server holds no user factor)
        # and trains numpy clients, which the vectorized engine cannot vmap.
        if self.dataset.name == "movielens":
            if "kind" not in self.partition.model_fields_set:
                self.partition.kind = "natural"
            if "federated" not in self.eval.model_fields_set:
                self.eval.federated = True
            if "name" not in self.engine.model_fields_set:
                self.engine.name = "sequential"
        return self

    @model_validator(mode="after")
    def _qffl_options(self) -> Config:
        s = self.strategy
        if s.qffl_lipschitz is not None and s.name != "qffl":
            raise ValueError(
                f"strategy.qffl_lipschitz applies to qffl only, got strategy.name={s.name!r}; "
                "leave it null"
            )
        if s.sampling == "size" and s.name != "qffl":
            raise ValueError(
                f"strategy.sampling=size is implemented for qffl only (its step sums the "
                f"clients drawn by size unweighted), got strategy.name={s.name!r}: use "
                "sampling=fixed or poisson"
            )
        return self

    @model_validator(mode="after")
    def _privacy_sampling(self) -> Config:
        p = self.privacy
        central = p.mechanism in ("central", "client")  # local DP is not amplified by sampling
        if central and p.accountant == "pld" and self.strategy.sampling == "fixed":
            raise ValueError(
                "privacy.accountant=pld has no analysis of fixed-size sampling (dp-accounting "
                "has none); set strategy.sampling=poisson or privacy.accountant=rdp"
            )
        if p.dp_sgd.enabled and self.strategy.name == "fedsgd":
            raise ValueError(
                "privacy.dp_sgd clips per-example gradients in local training; strategy.name="
                "fedsgd takes one full-batch gradient: use fedavg, fedprox or scaffold"
            )
        if p.mechanism != "none" and self.strategy.aggregator != "mean":
            raise ValueError(
                f"privacy.mechanism={p.mechanism} sums clipped updates (the sum is what the noise "
                f"hides); strategy.aggregator={self.strategy.aggregator} would replace that sum: "
                "use aggregator=mean with differential privacy"
            )
        if p.mechanism == "local" and self.strategy.name != "fedavg":
            raise ValueError(
                f"privacy.mechanism=local accounts each client's noised uploads of FedAvg: it "
                f"needs strategy.name=fedavg, got {self.strategy.name!r} (central and client "
                "wrap any strategy that aggregates sums)"
            )
        return self

    attack: AttackConfig | None = None
    secure_aggregation: SecureAggregationConfig = Field(default_factory=SecureAggregationConfig)

    @model_validator(mode="after")
    def _secure_aggregation_fits(self) -> Config:
        sa, s = self.secure_aggregation, self.strategy
        if not sa.enabled:
            return self
        why = None
        if s.name == "fedbuff":
            why = (
                "strategy.name=fedbuff weights each update by its own staleness as it arrives, "
                "with no cohort that uploads together; secure aggregation sums a cohort's "
                "updates at once"
            )
        elif self.dataset.name == "movielens":
            why = (
                "dataset.name=movielens averages each item row over the clients that touched "
                "it, which the server reads from each upload's row flags"
            )
        elif s.aggregator != "mean":
            why = (
                f"strategy.aggregator={s.aggregator} needs each update on its own; the server "
                "sees only their sum"
            )
        elif s.max_update_norm is not None:
            why = (
                "strategy.max_update_norm bounds each update at the server, which sees only the "
                "sum; bound them on the clients (privacy.mechanism=client) instead"
            )
        elif self.privacy.mechanism in ("central", "local"):
            why = (
                f"privacy.mechanism={self.privacy.mechanism} does not compose with it: "
                + (
                    "central clips each update at the server"
                    if self.privacy.mechanism == "central"
                    else "local accounts each client's releases from its individual uploads"
                )
                + "; use privacy.mechanism=client (clients clip and add their share of the noise)"
            )
        elif self.transport.upload or self.transport.error_feedback:
            why = (
                "the masked upload is its own encoding (quantised integers); leave "
                "transport.upload empty and error_feedback off"
            )
        elif self.pruning.enabled:
            why = "pruning.enabled sends sparse uploads; secure aggregation masks dense ones"
        elif self.attack is not None:
            why = "attack simulation needs plaintext updates"
        if why is not None:
            raise ValueError(f"secure_aggregation.enabled: {why}")
        most = ((1 << sa.modulus_bits) - 1) // ((1 << sa.quantization_bits) - 1)
        cohort = math.ceil(s.fraction_fit * self.partition.num_clients - 1e-9)
        if s.sampling == "fixed" and max(cohort, s.min_fit_clients) > most:
            raise ValueError(
                f"secure_aggregation: a cohort of {cohort} clients overflows Z_2^"
                f"{sa.modulus_bits} at {sa.quantization_bits} quantisation bits (at most {most}); "
                "raise modulus_bits or lower quantization_bits"
            )
        return self


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=[1,2]"`` -> (["a", "b"], [1, 2]). The value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r} (example: --set rounds=10)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse {raw!r} as YAML: {exc}") from None
    return key.strip().split("."), value


def _apply(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read ``path`` (YAML) if given, apply ``key=value`` overrides, and validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
        tree = loaded or {}
    for item in overrides:
        _apply(tree, *parse_override(item))
    return validate_config(tree)


def validate_config(tree: Mapping[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``field.path: got VALUE; allowed ...``."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            lines.append(f"{field}: unknown key (value {err['input']!r}); check the spelling")
            continue
        if err["type"] == "value_error" and err["loc"] in ((), ("privacy",)):
            # a check across keys: its message names them
            lines.append(msg.removeprefix("Value error, "))
            continue
        if err["type"] == "literal_error":
            msg = "allowed: " + msg.removeprefix("Input should be ")
        lines.append(f"{field}: got {err['input']!r}; {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)
