import sys

from earlytom.eval.launcher import main

sys.exit(main())
