"""batchpipe: product catalogs and brand kits → OpenAI Batch API jobs for GPT Image models, every image checked.

The public surface is small on purpose; stages live in their own modules:
``spec`` (external facts), ``models`` (items, statuses), ``errors`` (the error tree).
"""

from batchpipe.domain.items import BatchStatus, Item, ItemStatus
from batchpipe.errors import BatchpipeError

__all__ = ["BatchStatus", "BatchpipeError", "Item", "ItemStatus", "__version__"]

__version__ = "0.1.0"
