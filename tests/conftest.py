import structlog

from apikeyrouter.adapters.tokens import warm


def pytest_configure() -> None:
    # Tests read log events through structlog.testing.capture_logs; keep the console quiet otherwise.
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    # A router loads a tokenizer in a worker thread when a model first needs it; under `autojump_clock`
    # the virtual clock would run ahead while that thread works, through whatever deadline the test set.
    # Loaded once here, every test sees the steady state (test_tokenizer_lazy.py checks the lazy load).
    warm()
