from tinyvlm.cli import main

main()
