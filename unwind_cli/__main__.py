from unwind_cli.main import main

main()
