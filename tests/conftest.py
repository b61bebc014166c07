import structlog


def pytest_configure() -> None:
    # Tests read log events through structlog.testing.capture_logs; keep the console quiet otherwise.
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
