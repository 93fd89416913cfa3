"""The API's HTTP statuses are the API's: one table at its edge (producer_api/errors.py), none on the error
family, whose worker and operator members never reach HTTP."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from core import errors as core_errors
from producer_api import errors as api_errors
from producer_api.errors import http_status
from schemas import errors as schema_errors
from schemas.errors import CaptionerError

# What each error the API can answer with was answered with before the table moved here.
STATUSES = {
    schema_errors.CaptionerError: 500,
    schema_errors.SchemaContractError: 400,
    schema_errors.NotSingleObjectError: 400,
    schema_errors.TruncatedRecordError: 400,
    schema_errors.TrailingBytesError: 400,
    schema_errors.WriterSchemaMismatchError: 400,
    schema_errors.SchemaRegistryUnavailableError: 503,
    schema_errors.SchemaLookupsLimitedError: 503,
    schema_errors.SchemaRegistrationError: 500,
    core_errors.InvalidImageError: 422,
    core_errors.ImageTooLargeError: 422,
    core_errors.ImageTooCostlyError: 422,
    core_errors.UnsupportedImageFormatError: 415,
    core_errors.InvalidRequestError: 400,
    core_errors.KafkaTimeoutError: 503,
    api_errors.ApiError: 500,
    api_errors.MalformedRequestError: 400,
    api_errors.RequestTimeoutError: 408,
    api_errors.PayloadTooLargeError: 413,
    api_errors.TooManyItemsError: 413,
    api_errors.UnsupportedMediaTypeError: 415,
    api_errors.OverloadedError: 429,
    api_errors.BrokerUnavailableError: 503,
    api_errors.ShuttingDownError: 503,
    api_errors.CaptionTimeoutError: 504,
    api_errors.CaptionFailedError: 422,
    api_errors.CaptionUnavailableError: 503,
    api_errors.UnauthorizedError: 401,
}


@pytest.mark.parametrize(("error_class", "status"), STATUSES.items(), ids=lambda value: str(value))
def test_each_error_keeps_its_status(error_class: type[CaptionerError], status: int) -> None:
    assert http_status(error_class.__new__(error_class)) == status


def family() -> set[type[CaptionerError]]:
    """Every CaptionerError class of the shipped packages."""
    found: set[type[CaptionerError]] = set()
    for package_name in ("schemas", "core", "producer_api", "inference_consumer", "captioner"):
        package = importlib.import_module(package_name)
        for module in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            for value in vars(importlib.import_module(module.name)).values():
                if inspect.isclass(value) and issubclass(value, CaptionerError):
                    found.add(value)
    return found


def test_no_error_carries_an_http_status() -> None:
    carrying = sorted(cls.__qualname__ for cls in family() if hasattr(cls, "http_status"))
    assert not carrying
