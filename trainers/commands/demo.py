"""`stepcot demo`: the web demo (Gradio) in the browser, or a folder that a Hugging Face Space runs as is.

The library is imported inside `run`: `stepcot --help` then imports neither torch nor gradio.
"""

import argparse
import sys

from trainers.console import print_command_error

HELP = "web demo in the browser: upload a chest X-ray, see the seven steps, contradictions and maps"
EXAMPLES = [
    "stepcot demo --model outputs/demo/student --compare outputs/demo/teacher",
    "stepcot demo --model outputs/demo/student --compare '' --port 7861",
    "stepcot demo --model outputs/demo/student --write-space space/",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.choices import DEFAULT_DEMO_COMPARE as DEFAULT_COMPARE
    from trainers.choices import DEFAULT_DEMO_MODEL as DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"Step-CoT checkpoint served: folder or Hub id (default {DEFAULT_MODEL}, the README "
                        "main job); loaded once at start-up, visitors cannot name another")
    parser.add_argument("--compare", default=DEFAULT_COMPARE,
                        help=f"a second checkpoint shown side by side (default {DEFAULT_COMPARE}; \"\" for none)")
    parser.add_argument("--examples", nargs="*", default=None, metavar="IMAGE",
                        help="example images to offer (default: a few rendered synthetic radiographs)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--allow-any-model-path", action="store_true",
                        help="RISKY on a shared or public server: let visitors name any checkpoint folder or Hub id, "
                        "which the server then reads and loads")
    parser.add_argument("--write-space", metavar="DIR",
                        help="write a Space folder (app.py, requirements.txt, code, checkpoints, examples) and exit")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from trainers.inference.web_demo import DemoError, write_synthetic_examples
    from trainers.inference.web_demo_space import write_space

    try:
        if args.write_space:
            folder = write_space(args.write_space, args.model, args.compare, args.examples)
            print(f"Space folder written: {folder}/ (app.py, requirements.txt, README.md); "
                  f"run it with: cd {folder} && python app.py")
            return 0
        try:
            import gradio  # noqa: F401

            from trainers.inference.web_demo import build_demo, launch
        except ImportError:
            print('stepcot demo: error: the demo needs gradio: pip install -e ".[demo]"', file=sys.stderr)
            return 2
        examples = args.examples if args.examples is not None else write_synthetic_examples(
            tempfile.mkdtemp(prefix="stepcot-examples-"))
        demo = build_demo(args.model, args.compare or None, examples, device=args.device,
                          allow_any_model_path=args.allow_any_model_path)
        print(f"Step-CoT demo on http://{args.host}:{args.port} (Ctrl-C to stop)")
        launch(demo, host=args.host, port=args.port)
    except DemoError as error:
        print_command_error("demo", error)
        return 2
    except KeyboardInterrupt:
        print("stepcot demo: stopped")
    return 0
