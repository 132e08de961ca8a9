"""Secure aggregation as a staged round: SecAgg+ (Bell et al. 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead") and SecAgg (Bonawitz et al. 2017, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning").

``secure_fit`` is the secure channel's exchange (``strategies.channel.Secure``): it replaces the
one exchange of a fit round by the protocol's four (``fedloom.secagg.protocol``): advertise keys,
share keys, masked input (the fit tasks the strategy planned, each client's contribution to the
round's sums masked: ``core.summands``) and unmask. It returns the sums of the survivors'
contributions and of their weights, which the strategy turns into its aggregate exactly as it
does the plain channel's sums, so the server optimiser, server transforms and differential
privacy's noise on the sum work unchanged. A client that drops out, fails, or sends a message that breaks the protocol is left
out of the stage; the round goes on while every needed secret keeps ``t`` shares, and otherwise
fails cleanly (the model is unchanged and the next round starts afresh).

Per round it reports ``secagg_dropped_<stage>`` and ``secagg_seconds_<stage>`` for the stages
``advertise``, ``share``, ``masked`` and ``unmask``, the bytes of the protocol's own messages
(``secagg_bytes_up``: keys, shares and reveals; ``secagg_bytes_down``: the stage messages sent
with the tasks), ``secagg_neighbours`` and ``secagg_threshold``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fedloom.core.summands import SumPlan
from fedloom.core.task import CONTINUES, MESSAGE, Blob, Result, Task, Upload
from fedloom.errors import UpdateRejected
from fedloom.secagg import (
    ADVERTISE,
    CONFIG_KEY,
    SHARE,
    STAGE_NAMES,
    UNMASK,
    ProtocolError,
    SecureSum,
    ServerRound,
    Settings,
)
from fedloom.secagg.protocol import ADVERTISE_BYTES, CIPHERTEXT_BYTES, REVEAL_BYTES, stage_bytes
from fedloom.strategies.base import Exchange, RoundContext

log = logging.getLogger("fedloom")

SecurePlan = Generator[Exchange, None, "SecureSum | None"]


def secure_fit(
    ctx: RoundContext,
    fit_tasks: Sequence[Task],
    settings: Settings,
    blobs: Sequence[Blob],
    plan: SumPlan,
) -> SecurePlan:
    """Run ``fit_tasks`` (whose configs carry their sum plan, ``core.summands.SUM``) under
    secure aggregation; returns the unmasked sums of the clients' contributions and of their
    weights, or None (logged) when the round cannot complete. ``blobs``: every blob the fit
    tasks name."""
    protocol = ServerRound(settings, plan.values, weights=len(plan.terms))
    metrics = {f"secagg_dropped_{name}": 0.0 for name in STAGE_NAMES}
    seconds = dict.fromkeys(STAGE_NAMES, 0.0)
    sent: list[dict[str, Any]] = []
    received = 0
    by_client = {t.client_id: t for t in fit_tasks}

    def stage(
        name: str, tasks: list[Task], receive: Callable[[int, bytes], None]
    ) -> Generator[Exchange, None, set[int]]:
        start = time.perf_counter()
        done: set[int] = set()

        def on_result(result: Result, vec: np.ndarray | None) -> None:
            nonlocal received
            cid = result.task.client_id
            try:
                receive(cid, result.payload or b"")
            except ProtocolError as exc:
                raise UpdateRejected(f"secure aggregation, {name} stage: {exc}") from None
            if name != "masked":
                received += len(result.payload or b"")
            done.add(cid)

        sent.extend(t.config[CONFIG_KEY] for t in tasks)
        yield Exchange(tasks, list(blobs) if name == "masked" else [], on_result)
        metrics[f"secagg_dropped_{name}"] = float(len(tasks) - len(done))
        seconds[name] = time.perf_counter() - start
        return done

    def report() -> None:
        ctx.diagnostics.update(metrics)
        ctx.diagnostics.update({f"secagg_seconds_{k}": v for k, v in seconds.items()})
        ctx.diagnostics["secagg_bytes_up"] = float(received)
        ctx.diagnostics["secagg_bytes_down"] = float(stage_bytes(sent))

    def protocol_task(kind: str, cid: int, message: dict[str, Any], size: int) -> Task:
        config: dict[str, Any] = {"round": ctx.round, CONFIG_KEY: message}
        if kind != ADVERTISE:
            config[CONTINUES] = True
        return Task(kind, ctx.round, cid, config, {}, Upload(MESSAGE, size))

    try:
        cohort = sorted(by_client)
        if len(cohort) > settings.max_clients():
            raise ProtocolError(
                f"{len(cohort)} clients would overflow Z_2^{settings.modulus_bits} at "
                f"{settings.quantization_bits} quantisation bits (at most "
                f"{settings.max_clients()}); raise secure_aggregation.modulus_bits or lower "
                "quantization_bits"
            )
        advertised = yield from stage(
            "advertise",
            [protocol_task(ADVERTISE, c, protocol.config(1), ADVERTISE_BYTES) for c in cohort],
            protocol.receive_keys,
        )
        protocol.build_graph(ctx.rng)
        ctx.diagnostics["secagg_neighbours"] = float(
            min((len(v) for v in protocol.neighbours.values()), default=0)
        )
        ctx.diagnostics["secagg_threshold"] = float(protocol.threshold)
        shared = yield from stage(
            "share",
            [
                protocol_task(
                    SHARE,
                    c,
                    protocol.share_config(c),
                    4 + len(protocol.neighbours[c]) * (10 + CIPHERTEXT_BYTES),
                )
                for c in sorted(advertised)
            ],
            protocol.receive_shares,
        )
        masked_tasks = []
        for c in sorted(shared):
            task = by_client[c]
            config = {**task.config, CONTINUES: True, CONFIG_KEY: protocol.mask_config(c)}
            upload = Upload(MESSAGE, settings.masked_bytes(plan.values, len(plan.terms)))
            masked_tasks.append(replace(task, config=config, upload=upload))
        survivors = yield from stage("masked", masked_tasks, protocol.receive_masked)
        if len(survivors) < protocol.threshold:
            raise ProtocolError(
                f"{len(survivors)} masked inputs arrived, fewer than the threshold "
                f"{protocol.threshold}: a sum of so few would not hide them"
            )
        yield from stage(
            "unmask",
            [
                protocol_task(
                    UNMASK,
                    c,
                    protocol.unmask_config(c),
                    (len(protocol.neighbours[c]) + 1) * REVEAL_BYTES,
                )
                for c in sorted(survivors)
            ],
            protocol.receive_reveal,
        )
        start = time.perf_counter()
        total = protocol.finish()
        seconds["unmask"] += time.perf_counter() - start
    except ProtocolError as exc:
        log.error("round %d: secure aggregation cannot complete: %s", ctx.round, exc)
        report()
        return None
    report()
    return total
