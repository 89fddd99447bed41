"""uvicorn around the app: load the run once, bind, say when it is ready, stop cleanly.

`run(args)` is `glassgpt serve`. The socket is bound here rather than by uvicorn so that a busy
port or a wrong --host is one line of error (exit 2), and so that `--port 0` can print the port
the system picked. `BackgroundServer` serves an app on a thread of the current process, for the
tests and benchmarks/serve_latency.py.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import sys
import threading
import time

import uvicorn

from glassgpt.errors import GlassError, UsageError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        raise UsageError(f"--host {host!r} is not an address or a name this machine can resolve "
                         "(e.g. 127.0.0.1, or 0.0.0.0 for every interface)") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use; pick another --port "
                             "(--port 0 picks a free one)") from None
        if error.errno == errno.EACCES:
            raise UsageError(f"not allowed to listen on port {port} (ports below 1024 need root); "
                             "use a port from 1024 up") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host {host!r} is not an address of this machine") from None
        raise GlassError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, with a hook when it listens and one when it starts to stop."""

    def __init__(self, config: uvicorn.Config, on_ready=None, on_stop=None):
        super().__init__(config)
        self.on_ready, self.on_stop = on_ready, on_stop

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready:
            self.on_ready()

    async def shutdown(self, sockets=None) -> None:
        if self.on_stop:  # cancel the replies being written, so that their streams end now
            self.on_stop()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn re-raises the signal after a graceful stop so that the default handler runs (for
        # Ctrl-C: a KeyboardInterrupt). A server stopped by Ctrl-C or SIGTERM has ended normally
        # here, so the signals only ask it to stop (a second Ctrl-C forces it, as in uvicorn).
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _config(app) -> uvicorn.Config:
    # Quiet by default: one ready line, errors only. timeout_graceful_shutdown bounds how long a
    # stop waits for open connections (the replies themselves are cancelled at once).
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", ws="none",
                          timeout_graceful_shutdown=3, timeout_keep_alive=5)


def _stop_pool(app):
    pool = getattr(app.state, "pool", None)
    return (lambda: pool.close(timeout=0)) if pool is not None else None


class BackgroundServer:
    """`with BackgroundServer(app) as server:` serves `app` on a thread; `server.url` is its address."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port

    def __enter__(self) -> "BackgroundServer":
        self.socket = bind(self.host, self.port)
        self.url = url_of(self.socket)
        self.port = self.socket.getsockname()[1]
        self.server = _Server(_config(self.app), on_stop=_stop_pool(self.app))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="glassgpt-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def run(args) -> int:
    """`glassgpt serve`: load the run, serve it until Ctrl-C."""
    import torch

    from glassgpt import device as devices, paths
    from glassgpt.chat.session import DEFAULT_MAX_TOKENS, ChatModel
    from glassgpt.engine import compiled_summary
    from glassgpt.runs import load_run, read_run_config
    from glassgpt.serve.app import ServeSettings, create_app

    if not (paths.run_dir(args.run) / "config.json").exists():
        try:
            read_run_config(paths.run_dir(args.run))  # its error lists the runs there are
        except GlassError as error:
            raise UsageError(str(error)) from None
    device = devices.resolve_device(args.device)
    sock = bind(args.host, args.port)  # before loading: a busy port fails at once
    try:
        run_ = load_run(args.run, args.checkpoint, device)
        if device.type == "cpu" and args.workers > 1:
            # Workers share the cores: give each its part instead of all of them fighting for all.
            torch.set_num_threads(max(1, torch.get_num_threads() // args.workers))
        chat = ChatModel(run_, compile=args.compile)
        if args.compile:  # now, on this thread: the workers then only run the graphs
            started = time.perf_counter()
            print("compiling the decode step …", file=sys.stderr, flush=True)
            graphs = chat.engine.compile_now()
            print(compiled_summary(graphs, time.perf_counter() - started), file=sys.stderr, flush=True)
        app = create_app(chat, ServeSettings(args.workers, args.queue, args.max_tokens or DEFAULT_MAX_TOKENS))
    except BaseException:
        sock.close()
        raise
    parameters = sum(p.numel() for p in run_.model.parameters())
    if not chat.is_chat_model:
        print(f"note: run {args.run!r} is a base model (not trained on conversations): its replies continue text "
              f"rather than answer; chat-train it with --stage mid, then --stage sft", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: --host {args.host} lets other machines reach this server; it has no authentication",
              file=sys.stderr)
    url = url_of(sock)

    def ready() -> None:
        print(f"serving {args.run} (step {run_.step}, {parameters:,} parameters) at {url}  (Ctrl-C to stop)",
              flush=True)

    server = _Server(_config(app), on_ready=ready, on_stop=_stop_pool(app))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # a Ctrl-C before uvicorn took the signals over, or a forced stop
        pass
    print("stopped", file=sys.stderr)
    return 0
