app_name = "encryption"
urlpatterns = []
