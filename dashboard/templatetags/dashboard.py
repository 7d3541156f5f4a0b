from django import template

from dashboard import charts

register = template.Library()


@register.filter
def duration(value):
    """A timedelta as ``3 min 20 s`` (an em dash for none)."""
    return charts.human_duration(value)


@register.filter
def percent(value):
    return "—" if value is None else f"{value * 100:.1f} %"
