"""kbqa's application: settings, services, the HTTP service with its web page, the command line, the client."""

from app.logs import quiet_import_noise

# Here rather than in configure_logging alone: `kbqa finetune` (which needs no kbqa settings) and any
# in-process use (a script, a notebook, the tests) import torchao through transformers too.
quiet_import_noise()
