from django import template

from reconcile import services

register = template.Library()


@register.simple_tag(takes_context=True)
def reconcile_panel(context, rollback):
    """The reconciliation panel's data for the rollback page (``{% include %}`` needs no view
    change): ``{% reconcile_panel rollback as rc %}``."""
    return services.panel(rollback, context["request"].user)
