"""Your own labelled images as medal datasets: import (importer), store and read (store), and the
`--dataset` resolver every command uses (resolve)."""
