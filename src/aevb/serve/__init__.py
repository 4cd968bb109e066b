"""``aevb serve``: a local latent-space explorer for a trained run, in the browser.

:mod:`.explorer` holds the model side (latent maps, decoding, prior samples, paths),
:mod:`.app` the Starlette app and its JSON endpoints, :mod:`.command` the sub-command;
the page (``static/``) only draws what the server decodes.
"""

from .command import add_arguments, cmd_serve

__all__ = ["add_arguments", "cmd_serve"]
