from glm4voice_api.cli import main

if __name__ == "__main__":
    main()
