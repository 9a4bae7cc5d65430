"""Your own labelled images as medal datasets: import them (importer, sources), store and read them (store)."""
