def index(request):  # replaced below
    raise NotImplementedError
