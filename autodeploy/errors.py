"""User-facing errors.

Every error a user can cause (bad source, bad recipe, unsupported model, bad request) is an
`AutoDeployError` whose message is one line naming the cause. The CLI prints that line and exits
non-zero; the traceback only shows with `--debug`.
"""


class AutoDeployError(Exception):
    """Base class: the message alone must tell the user what went wrong and where."""


class SourceError(AutoDeployError):
    """The model source does not resolve: missing path, no config.json, unknown id."""


class RecipeError(AutoDeployError):
    """A recipe file or override is malformed or names an unknown key."""


class ExportError(AutoDeployError):
    """torch.export failed; the message names the failing module and op."""


class UnsupportedModelError(AutoDeployError):
    """The architecture cannot be handled (not a causal LM, unsupported feature)."""


class RequestError(AutoDeployError):
    """A generation request is invalid (bad sampling values, prompt too long)."""
