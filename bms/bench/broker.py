"""``bms bench broker``: what one Mosquitto costs per message, apart from its clients.

The scaling model needs the broker's own rate (docs/scaling.md, I11). Measured through
the system, the broker shares two cores with a Python publisher and the bridge, which
are slower than it (I2, I10), so the rate there is the clients'. Here the clients are
Mosquitto's own C tools (``mosquitto_pub --repeat``, ``mosquitto_sub``), a one-sample
telemetry message (the broker never parses it, so one message sent N times costs what N
different ones do; ``mosquitto_pub -l`` would read distinct lines but drops what it has
not sent when its input ends), QoS 1 both ways as the vehicles and the bridge use it, and the figure that
carries over to a bigger machine is the broker process's own CPU time per message:
messages per broker-core-second. The wall-clock rate is given too, but it is bound by
whichever of the three processes is slowest on these two cores.

The broker is the one ``bms run`` starts (:func:`bms.services.spawn_mosquitto`, with its
persistence and queue settings), on a private port and directory.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bms.services import free_port, mosquitto_binary, spawn_mosquitto

__all__ = ["run_broker_bench"]

#: One sample, as a vehicle sends it (the shape of contracts.telemetry's message).
_MESSAGE = (
    '{"schema_version":2,"vehicle_id":"v%06d","battery_id":"b%06d","seq":%d,"samples":[{"ts":%.3f,'
    '"pack_voltage_v":47.5,"current_a":6.0,"temp_c":28.0,"soc_pct":80.5,"lat":52.52,"lon":13.4,'
    '"odometer_km":120.5,"speed_kmh":16.0,"cell_min_v":3.64,"cell_max_v":3.67}]}'
)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"Expected {name} on PATH (apt-get install mosquitto-clients), found none.")
    return found


def _one_round(broker_bin: str, messages: int, work: Path, payload: str) -> dict[str, Any]:
    port = free_port()
    mqtt_dir = work / f"mqtt-{port}"
    mqtt_dir.mkdir()
    broker = spawn_mosquitto(broker_bin, mqtt_dir, port)
    try:
        broker.wait_listening(port, 15.0)
        proc = psutil.Process(broker.proc.pid)
        sub = subprocess.Popen(
            [_tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", "fleet/+/telemetry",
             "-C", str(messages), "-i", "bench-sub"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)  # subscribed before the first publish
        cpu0 = proc.cpu_times()
        t0 = time.perf_counter()
        pub = subprocess.run(
            [_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", "fleet/v/telemetry",
             "-m", payload, "--repeat", str(messages), "-i", "bench-pub"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600, check=False,
        )  # fmt: skip
        published_s = time.perf_counter() - t0
        try:
            rc = sub.wait(timeout=120)
        except subprocess.TimeoutExpired:
            sub.kill()
            raise RuntimeError(f"Expected the subscriber to receive {messages} messages within 120 s of the last publish, it did not.") from None
        wall_s = time.perf_counter() - t0
        cpu1 = proc.cpu_times()
        if pub.returncode != 0 or rc != 0:
            err = (pub.stderr or b"").decode()[-300:] + (sub.stderr.read() if sub.stderr else b"").decode()[-300:]
            raise RuntimeError(f"Expected the publisher and subscriber to finish cleanly, got rc {pub.returncode}/{rc}: {err}")
        broker_cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        return {
            "wall_s": wall_s,
            "published_s": published_s,
            "messages_per_s": messages / wall_s,
            "broker_cpu_s": broker_cpu_s,
            "messages_per_broker_core_s": messages / broker_cpu_s if broker_cpu_s > 0 else None,
        }
    finally:
        broker.stop()


def run_broker_bench(messages: int = 200_000, repeats: int = 3) -> dict[str, Any]:
    """Publish ``messages`` one-sample telemetry messages through a fresh broker,
    ``repeats`` times; medians and spreads."""
    if messages < 1 or repeats < 1:
        raise ValueError(f"Expected messages >= 1 and repeats >= 1, got {messages} and {repeats}.")
    broker_bin = mosquitto_binary()
    if broker_bin is None:
        raise RuntimeError("Expected a mosquitto binary (apt-get install mosquitto), found none.")
    with tempfile.TemporaryDirectory(prefix="bms-bench-broker-") as tmp:
        work = Path(tmp)
        payload = _MESSAGE % (1, 1, 1, time.time())
        rounds = [_one_round(broker_bin, messages, work, payload) for _ in range(repeats)]

    def summary(key: str) -> dict[str, float]:
        values = [float(r[key]) for r in rounds if r[key] is not None]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    version = subprocess.run([broker_bin, "-h"], capture_output=True, text=True, check=False).stdout.splitlines()
    return {
        "bench": "broker",
        "date": time.strftime("%Y-%m-%d"),
        "messages": messages,
        "repeats": repeats,
        "message_bytes": len(payload),
        "qos": 1,
        "broker": version[0] if version else broker_bin,
        "messages_per_s": summary("messages_per_s"),
        "messages_per_broker_core_s": summary("messages_per_broker_core_s"),
        "broker_cpu_s": summary("broker_cpu_s"),
        "rounds": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rounds],
    }


if __name__ == "__main__":  # pragma: no cover - `bms bench broker` is the entry point
    print(json.dumps(run_broker_bench()))
