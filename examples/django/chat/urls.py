from django.urls import path

from . import views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("token/", views.token, name="token"),
    path("send/", views.send, name="send"),
]
