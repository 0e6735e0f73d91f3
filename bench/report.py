"""The results as Markdown tables: printed by `make bench` and pasted into the README."""

from __future__ import annotations

from typing import Any

TARGET_NAMES = {"torchserve": "TorchServe", "fastapi": "FastAPI + uvicorn", "in_process": "in-process forward"}


def markdown(results: dict[str, Any]) -> str:
    """Every section that ran, each as a short heading line and a table."""
    parts = [_machine(results)]
    for key, render in (("serving", _serving), ("consensus", _consensus), ("cycle", _cycle),
                        ("cycle_parts", _cycle_parts), ("learning", _learning), ("deploy", _deploy),
                        ("longrun", _longrun), ("input_drift", _input_drift)):
        if key in results:
            parts.append(render(results[key]))
    return "\n\n".join(parts) + "\n"


def _table(header: list[str], rows: list[list[object]]) -> str:
    alignment = [" --- "] + [" ---: "] * (len(header) - 1)  # names left, figures right
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _machine(results: dict[str, Any]) -> str:
    machine, load = results["machine"], results["load_average"]
    return (f"Measured {results['started']} on {machine['cpu_model']}, {machine['usable_cores']} cores, "
            f"{machine['ram_gib']} GiB RAM; Python {machine['python']}, torch {machine['torch']}, TorchServe "
            f"{machine['torchserve']}, FastAPI {machine['fastapi']}, uvicorn {machine['uvicorn']} "
            f"({machine['uvicorn_http']}, {machine['uvicorn_loop']}). Client and servers share the cores; "
            f"1-minute load average {min(load.values()):.1f} to {max(load.values()):.1f} during the run. "
            f"Settings: {results['settings']['name']}, {results['seconds']:.0f} s in all.")


def _serving(serving: dict[str, Any]) -> str:
    winner = serving["winner"]
    rows = []
    for concurrency, served in serving["targets"]["torchserve"].items():
        for target, loads in serving["targets"].items():
            load = loads[concurrency]
            rows.append([TARGET_NAMES[target], concurrency, load["requests_per_second"], load["p50_ms"], load["p99_ms"],
                         _times(served["requests_per_second"], load["requests_per_second"])])
    tried = [[_config(entry["settings"]) + (" (chosen)" if entry["settings"] == winner else ""),
              *(entry["load"][c]["requests_per_second"] for c in entry["load"]),
              *(entry["load"][c]["p99_ms"] for c in entry["load"])] for entry in serving["torchserve_tried"]]
    concurrencies = list(serving["targets"]["torchserve"])
    return "\n\n".join([
        f"**1. Serving** the champion, {serving['request']}. TorchServe: {_config(winner)} (of {len(tried)} "
        "settings tried, the best geometric mean of req/s over the concurrencies), prediction log on; FastAPI: "
        f"{serving['fastapi_workers']} uvicorn worker(s), no prediction log; in-process: the app's work without "
        "HTTP. All with one torch thread per worker.",
        _table(["target", "concurrency", "req/s", "p50 ms", "p99 ms", "TorchServe req/s ÷ this"], rows),
        "TorchServe settings tried:",
        _table(["workers, torch threads, batch, delay", *(f"req/s c={c}" for c in concurrencies),
                *(f"p99 ms c={c}" for c in concurrencies)], tried),
    ])


def _config(settings: dict[str, Any]) -> str:
    return (f"{settings['workers']} worker(s), {settings['torch_threads']} torch thread(s), batch "
            f"{settings['batch_size']}, delay {settings['max_batch_delay_ms']} ms")


def _times(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


def _consensus(consensus: dict[str, Any]) -> str:
    served, local = consensus["torchserve"], consensus["in_process"]
    return "\n\n".join([
        f"**2. Consensus filter**: {consensus['samples']} drifted images through B1 and B2 in .npy batches of "
        f"{consensus['batch_size']}; labels identical both ways: {consensus['labels_identical']}.",
        _table(["B1 + B2", "samples/s", "seconds", "÷ in-process"], [
            ["TorchServe (ask_branch)", served["samples_per_second"], served["seconds"],
             _times(served["samples_per_second"], local["samples_per_second"])],
            ["in-process forward", local["samples_per_second"], local["seconds"], "1.00x"],
        ]),
    ])


def _cycle_parts(cycle: dict[str, Any]) -> str:
    size = "x".join(str(side) for side in cycle["image_size"])
    return _cycle(cycle, f"**3b. CT cycle on the parts line** ({size})")


def _cycle(cycle: dict[str, Any], title: str = "**3. CT cycle**") -> str:
    rows = [[name, stage["wall"], stage["startup"], stage["artifact_io"], stage["work"]]
            for name, stage in cycle["stages"].items()]
    trip, overhead = cycle["trip_to_default_seconds"], cycle["trip_to_default_overhead_seconds"]
    share = f"{overhead / trip:.0%}" if trip else "n/a"
    return "\n\n".join([
        f"{title} ({cycle['drift']}, {cycle['train_epochs']} epochs, champion v{cycle['old_version']} -> "
        f"v{cycle['new_version']}): {_cell(trip)} s from the monitor tripping to the new champion answering as "
        f"default, of which about {overhead:.1f} s ({share}) is orchestration overhead (task start-up, artifact "
        f"I/O); the whole run {cycle['cycle_seconds']:.1f} s, {cycle['between_tasks_seconds']:.1f} s of it in "
        f"kfp.local between tasks. A process's first run also waits {cycle['warm_up_seconds']:.1f} s in its first "
        "task for the forkserver's warm-up (every stage's imports, once).",
        _table(["task", "wall s", "start-up s", "artifact I/O s", "work s"], rows),
    ])


def _learning(lines: dict[str, Any]) -> str:
    parts = []
    for name, learning in lines.items():
        rows = [[kind, row["old_champion_accuracy"], row["new_champion_accuracy"], row["oracle_accuracy"],
                 row["new_over_oracle"], row["pseudo_label_precision"], row["coverage"]]
                for kind, row in learning["kinds"].items()]
        size = "x".join(str(side) for side in learning["image_size"])
        boot = ", ".join(f"{role} {score}" for role, score in learning["bootstrap_golden_accuracy"].items())
        parts += [
            f"**4. Learning quality, {name}** ({size}, {learning['classes']} classes; bootstrap golden accuracy "
            f"{boot}) at severity {learning['severity']}, window {learning['window']}, at most "
            f"{learning['train_epochs']} epochs; accuracy on the {learning['evaluated_on']}. The oracle is the same "
            "recipe trained on the window's true labels.",
            _table(["drift", "old champion", "new champion", "oracle", "new ÷ oracle", "pseudo-label precision",
                    "coverage (kept)"], rows),
        ]
    return "\n\n".join(parts)


def _deploy(deploy: dict[str, Any]) -> str:
    versions = ", ".join(f"v{version}: {count}" for version, count in deploy["answered_by_version"].items())
    phases = [("steady", deploy["steady"]),
              *((f"swap {number} ({swap['seconds']} s)", swap) for number, swap in enumerate(deploy["swaps"], 1)),
              ("during the swaps", deploy["during_swaps"])]
    rows = [[phase, figures["requests"], figures["failed"], figures["p50_ms"], figures["p99_ms"], figures["max_ms"]]
            for phase, figures in phases]
    return "\n\n".join([
        f"**5. Deploy under load** ({', '.join(deploy['versions'])}: {', '.join(deploy['outcomes'])}; the whole "
        f"deploy stage each time): a separate process's {deploy['concurrency']} client threads sending as fast "
        f"as they are answered. Slowest request during the swaps / steady p99: "
        f"{deploy['slowest_over_steady_p99']}; answered by {versions}.",
        _table(["requests", "n", "failed", "p50 ms", "p99 ms", "max ms"], rows),
    ])


def _longrun(longrun: dict[str, Any]) -> str:
    goals = longrun["goals"]
    stages = ", then ".join(f"{kind} ({count})" for kind, count in longrun["stages"])
    rows = [[cycle["cycle"], cycle["drift"], cycle["champion"], cycle["seconds"], cycle["train_size"],
             _largest(cycle["peak_mb"]), cycle["accuracy_before"], cycle["accuracy_after"]]
            for cycle in longrun["cycles"]]
    return "\n\n".join([
        f"**6. The loop over time**: {len(rows)} cycles over one stream, {stages}; training sets capped at "
        f"{longrun['previous_per_class']} previous rows per class. Slowest cycle / first: "
        f"{goals['max_seconds_over_first']} (goal 1.5); highest peak memory / first: "
        f"{goals['max_peak_mb_over_first']} (goal 1.5); cycles that left the champion worse: "
        f"{goals['cycles_that_lowered_accuracy'] or 'none'}. Every stage's peak is in results.json.",
        _table(["cycle", "drift", "champion", "seconds", "training rows", "largest peak MB", "accuracy before",
                "after"], rows),
    ])


def _largest(peaks: dict[str, int]) -> str:
    """The stage with the highest peak resident memory, e.g. "train 518"."""
    if not peaks:
        return "n/a"
    task = max(peaks, key=peaks.get)
    return f"{task} {peaks[task]}"


def _input_drift(lines: dict[str, Any]) -> str:
    parts = []
    for name, drift in lines.items():
        severities = list(next(iter(drift["kinds"].values()))["severities"]) if drift["kinds"] else []
        header = ["drift", "false alarms: drift trigger", "yield trigger", "champion accuracy / yield, clean"]
        for severity in severities:
            header += [f"at {severity}: drift trigger delay", "yield trigger delay", "champion accuracy / yield"]
        rows = []
        for kind, figures in drift["kinds"].items():
            row = [kind, _alarms(figures["false_alarms"]["drift"]), _alarms(figures["false_alarms"]["yield"]),
                   _pair(figures["champion_accuracy_clean"], figures["champion_yield_clean"])]
            for severity in severities:
                delays = figures["severities"][severity]
                row += [_delay(delays["drift"], drift["horizon"]), _delay(delays["yield"], drift["horizon"]),
                        _pair(delays["champion_accuracy"], delays["champion_yield"])]
            rows.append(row)
        pooled = drift["false_alarms"]
        rows.append(["all kinds", _alarms(pooled["drift"]), _alarms(pooled["yield"])]
                    + [""] * (len(header) - 3))
        parts += [
            f"**7. Input drift, {name}**: the drift trigger compares the champion's embeddings of its first "
            f"{drift['window']} parts with those of its newest {drift['window']} (MMD, "
            f"{drift['drift_permutations']} permutations, {drift['seconds_per_test'] * 1000:.0f} ms a test) and trips "
            f"at p <= {drift['drift_level']}; "
            f"the yield trigger trips when the {drift['yield_rule']}. A check every {drift['check_every']} parts; "
            f"{drift['streams']} streams per drift kind, the drift starting at a random point between two checks. "
            "Delay: parts from the drift's first part to the first check that trips, median (max) over the streams, "
            f"'> {drift['horizon']}' where it had not tripped {drift['horizon']} parts on. False alarms: checks "
            f"that tripped of those on clean windows clear of the reference ({drift['clean_checks_per_stream']} "
            "per stream).",
            _table(header, rows),
        ]
    return "\n\n".join(parts)


def _pair(accuracy: float, yield_: float) -> str:
    return f"{accuracy:.3f} / {yield_:.3f}"


def _alarms(figures: dict[str, Any]) -> str:
    """e.g. "1 of 72 (1.4%)"."""
    rate = "n/a" if figures["rate"] is None else f"{figures['rate']:.1%}"
    return f"{figures['tripped']} of {figures['checks']} ({rate})"


def _delay(figures: dict[str, Any], horizon: int) -> str:
    """Median (max) parts, e.g. "81 (105)"; "> 600" for what a missed stream makes unknown, with the count missed."""
    median = f"> {horizon}" if figures["median"] is None else f"{figures['median']:g}"
    largest = f"> {horizon}" if figures["max"] is None else f"{figures['max']:g}"
    missed = figures["streams"] - figures["detected"]
    return f"{median} ({largest})" + (f", {missed} of {figures['streams']} missed" if missed else "")
