"""kube-controller-manager's ``cronjob-controller``: cron schedules (:mod:`.schedule`) and the
sync that starts Jobs on them (:mod:`.controller`)."""

from reconcilers.controllers.cronjob.controller import CronJobController

__all__ = ["CronJobController"]
