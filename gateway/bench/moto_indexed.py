"""moto's server with Secrets Manager lookups and list pages that do not scan every secret.

The benchmark's sync part starts this with the test venv's Python for the scans of
100,000 secrets. moto (5.x) keeps secrets in a dict keyed by name, but its `SecretsStore`
finds a secret by comparing every secret's ARN and name with the identifier (one pass over
all secrets per call), and `list_secrets` renders every secret to a dict before it cuts the
page. Both are O(N) a call; at 100,000 secrets one scan then takes hours, and the figure
would be moto's, not the gateway's.

This changes nothing a client can see: the same secrets are found by the same name, full ARN
or partial ARN, and the same pages come back in the same order with the same tokens. Only
the two lookups are indexed. Everything else is moto as installed.
"""

import sys

from moto.secretsmanager import models
from moto.secretsmanager.utils import get_secret_name_from_partial_arn
from moto.server import main


class IndexedSecretsStore(models.SecretsStore):
    """Name lookups by the dict's key, ARN lookups by an index kept beside it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._by_arn = {}

    def __setitem__(self, key, value):
        old = dict.get(self, key)
        if old is not None:
            self._by_arn.pop(old.arn, None)
        dict.__setitem__(self, key, value)
        self._by_arn[value.arn] = key

    def _find(self, key):
        secret = dict.get(self, key)
        if secret is not None and secret.name == key:
            return secret
        name = self._by_arn.get(key)
        if name is not None:
            return dict.get(self, name)
        # moto's own fallback: a partial ARN names the secret by its last part.
        return dict.get(self, get_secret_name_from_partial_arn(key))

    def __getitem__(self, key):
        secret = self._find(key)
        if secret is None:
            raise KeyError(key)
        return secret

    def __contains__(self, key):
        return self._find(key) is not None

    def get(self, key, default=None):
        secret = self._find(key)
        return default if secret is None else secret

    def pop(self, key, default=None):
        secret = self._find(key)
        if secret is None:
            return default
        name = secret.name if dict.__contains__(self, secret.name) else get_secret_name_from_partial_arn(key)
        self._by_arn.pop(secret.arn, None)
        return dict.pop(self, name, default)


def list_secrets(self, filters, max_results=models.MAX_RESULTS_DEFAULT, next_token=None,
                 include_planned_deletion=False):
    """moto's `list_secrets`, rendering only the secrets of the page asked for."""
    matching = []
    for secret in self.secrets.values():
        if hasattr(secret, "deleted_date"):
            if secret.deleted_date and not include_planned_deletion:
                continue
        if models._matches(secret, filters):
            matching.append(secret)
    page, token = self._get_secret_values_page_and_next_token(matching, max_results, next_token)
    return [secret.to_dict() for secret in page], token


models.SecretsStore = IndexedSecretsStore
models.SecretsManagerBackend.list_secrets = list_secrets

if __name__ == "__main__":
    sys.exit(main())
