"""bnlab's service: settings, SQL store, REST API, CLI and client.

Never imports torch or the trainer: jobs run in worker subprocesses (see ``workers``).
"""
