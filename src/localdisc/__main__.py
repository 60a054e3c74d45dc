from localdisc.cli import main

main()
