"""Records: what runs leave behind. Saved outputs (naming, atomic PNG writes), run records and the saving of a
loop's ``Done`` (``runs``), History, PNG Info, replay, and the facade's policy over them (``policy``)."""
