"""Errors a user can act on. Every message says what was wrong and what to do instead."""

from __future__ import annotations


class FedloomError(Exception):
    """Base class for every error fedloom raises on purpose."""


class ConfigError(FedloomError):
    """A configuration value is missing or out of range."""


class DatasetError(FedloomError):
    """A dataset cannot be found or read."""


class UpdateRejected(FedloomError):
    """A client's update failed validation and was kept out of the aggregate."""


class DeploymentError(FedloomError):
    """A deployment (``fedloom server`` / ``fedloom client``) cannot go on; the message says why."""
