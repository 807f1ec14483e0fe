"""The `modelfleet` command. Each subcommand lives in its own module and is imported only when used,
so `modelfleet cluster status` does not pay for importing torch."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "cluster": ("modelfleet.localcluster.cli", "the embedded local Kubernetes cluster: up, down, status"),
    "images": ("modelfleet.images", "build the container images without Docker (buildah) and load them into the real node"),
    "demo": ("modelfleet.demo", "the whole lifecycle on the local cluster: train, then serve, then query"),
    "train": ("modelfleet.localtrain", "run the trainer (the program a TrainingJob's pods run); "
                                       "-f trainingjob.yaml runs a TrainingJob manifest here"),
    "report-forward": ("model_runtime.training.report_forward",
                       "run your own training program and forward its progress reports to the operator"),
    "serve": ("model_runtime.serving.cli", "run the inference server (the program a ModelDeployment's pods run)"),
    "operator": ("modelfleet_operator.main", "run the operator against the current kubeconfig"),
}


def usage() -> str:
    lines = ["usage: modelfleet <command> [options]", "", "commands:"]
    width = max(map(len, SUBCOMMANDS))
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("--version", "version"):
        from modelfleet import __version__

        print(__version__)
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"modelfleet: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
