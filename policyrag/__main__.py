from policyrag.cli import main

main()
