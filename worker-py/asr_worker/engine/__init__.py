"""Speech recognition engines behind one interface (see base.Engine)."""
