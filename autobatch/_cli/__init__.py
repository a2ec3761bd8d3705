"""The CLI's parts below ``autobatch.cli``: option declarations (``options``), the tables of
``studies`` and ``show`` (``tables``) and live progress (``progress``). ``autobatch.cli``
declares the commands and makes one library call each; these modules render."""
